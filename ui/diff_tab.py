"""The Diff tab: what changed between a reference checkpoint and an intervened one, and where.

Formatting only: engine.diff computes behaviour, representation and latent shifts and the report;
engine.patching localises by activation patching.
"""

from __future__ import annotations

import json
import math

import gradio as gr
import pandas as pd
import torch

from engine import attribution, diff, heldout, patching
from engine.specs import ModelSpec
from ui import readings, share
from ui.common import (
    AppContext,
    ImageInput,
    clear_on_failure,
    heatmap_files,
    load_image,
    parse_labels,
    user_errors,
)

PROBE_HELP = (
    "Toy pair: the number of freshly rendered scenes. Real pair: a folder of images inside a directory the "
    "server allows (--allow-dir), optionally followed by ':N' for at most N images."
)
PATCH_MODES = [
    ("between the two models (reference written into the intervened one, and back)", "models"),
    ("inside the intervened model: this image against its counterfactual", "intervened"),
    ("inside the reference model: this image against its counterfactual", "reference"),
]
CORRUPTION_CHOICES = [
    ("counterfactual image (in distribution; recommended)", "counterfactual"),
    ("Gaussian noise on the pixels (out of distribution)", "gaussian_noise"),
]


def probe_images(app: AppContext, reference: ModelSpec, probe_text: str, labels: list[str]):
    """(images, truth, description) of the probe set the user named."""
    text = str(probe_text or "").strip() or "64"
    if reference == ModelSpec.toy():
        try:
            n = int(float(text))
        except (ValueError, OverflowError):
            raise ValueError(f"for the toy pair the probe set is a number of scenes (2 .. 512); got {text!r}") from None
        images, truth, _ = heldout.toy_probe(n, labels)
        return images, truth, f"{n} freshly rendered toy scenes (seed {heldout.DIFF_PROBE_SEED})"
    folder, _, limit = text.rpartition(":") if text.rsplit(":", 1)[-1].isdigit() else (text, "", "")
    images, skipped = heldout.folder_images(folder, app.allowed, int(limit) if limit else heldout.MAX_PROBE_IMAGES)
    return images, None, f"{len(images)} images from {folder}" + (f" ({skipped} unreadable skipped)" if skipped else "")


def run_diff(app: AppContext, pair_name, probe_text, labels_text, template, top_k, image):
    """Handler behind the `diff` endpoint."""
    preset = app.pair_preset(pair_name)
    labels = parse_labels(labels_text)
    top = max(1, min(50, int(float(top_k or 20))))
    images, truth, probe = probe_images(app, preset.reference, probe_text, labels)  # refused before any load
    _, pair = app.pair(pair_name)
    picture = load_image(image) if image else None
    result = diff.compare(pair, images, labels, template or None, truth, probe, top, picture)
    behaviour = pd.DataFrame(result["behaviour"]["per_label"])
    representation = pd.DataFrame(
        [
            {"block": row["block"], "measure": measure, "value": row[measure]}
            for row in result["representation"]
            for measure in ("cka", "cosine")
        ]
    )
    latents = pd.DataFrame(result["latents"])[
        ["rank", "latent", "name", "label", "attribution_reference", "attribution_intervened", "frequency_reference",
         "frequency_intervened"]
    ]  # fmt: skip
    triggers = pd.DataFrame(result["triggers"] or [{"rank": None, "latent": None, "name": "no change to explain"}])
    markdown_path = share.write_file(result["report_markdown"], "transition_report_", ".md")
    json_path = share.write_file(
        json.dumps(finite(result["report"]), default=float, indent=2, allow_nan=False), "transition_report_", ".json"
    )
    summary = (
        f"**{readings.escaped(preset.name)}**: predictions changed on {result['behaviour']['flip_rate']:.0%} of "
        f"{readings.escaped(probe)}."
    )
    if result["triggers"]:
        top = result["triggers"][0]
        summary += (
            f" The change happens on images with latent {top['latent']} ({readings.escaped(top['name'])}): present on "
            f"{top['present_on_changed']:.0%} of the images whose answer changed and {top['present_on_unchanged']:.0%}"
            f" of the others (AUROC {top['auroc']:.2f})."
        )
    use = result["latents"][0]
    summary += (
        f" The latent whose use changed most is {use['latent']} ({readings.escaped(use['name'])}): its attribution "
        f"to {readings.escaped(use['label'])} went from {readings.number(use['attribution_reference'])} to "
        f"{readings.number(use['attribution_intervened'])}. The report lists the evidence and the caveats."
    )
    return (
        summary,
        readings.display_table(behaviour),
        representation,
        readings.display_table(triggers),
        readings.display_table(latents),
        [markdown_path, json_path],
    )


def finite(value):
    """The report with NaN and infinities as null (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def run_patch(app: AppContext, pair_name, image, counterfactual, labels_text, template, mode, corruption, metric):
    """Handler behind the `patch` endpoint: per block and per token, denoising and noising shown apart."""
    _, pair = app.pair(pair_name)
    labels = parse_labels(labels_text)
    picture = load_image(image)
    mode = mode or "models"
    if mode == "models":
        result = diff.patch_models(pair, picture, labels, template or None, metric=metric or "logit_difference")
        what = (
            f"reference says {readings.escaped(result['predicted_reference'])}, intervened says "
            f"{readings.escaped(result['predicted_intervened'])}"
        )
        workbench = pair.intervened
    elif mode in ("intervened", "reference"):
        workbench = pair.intervened if mode == "intervened" else pair.reference
        other = load_image(counterfactual) if counterfactual else None
        result = diff.patch_within(
            workbench, picture, other, labels, template or None, metric=metric or "logit_difference",
            corruption=corruption or "counterfactual",
        )  # fmt: skip
        what = (
            f"clean says {readings.escaped(result['predicted_clean'])}, corrupted says "
            f"{readings.escaped(result['predicted_corrupted'])}"
        )
        if result["out_of_distribution"]:
            what += " · **Gaussian noise is out of distribution: it can make any place look important**"
    else:
        raise ValueError(f"unknown patching mode {mode!r}; valid: models, intervened, reference")
    maps, captions, rows = [], [], []
    for direction in ("denoising", "noising"):
        grid = result[direction]
        for block, recovered in enumerate(grid["all_tokens_recovered"]):
            per_token_T = torch.tensor(grid["per_token_recovered"][block]).nan_to_num(0.0)
            map_HW = attribution.patch_map(per_token_T, workbench.backend.grid, workbench.backend.n_prefix_tokens)
            caption = f"{direction}, after block {block}: all tokens {as_share(recovered)}"
            if workbench.backend.n_prefix_tokens:
                caption += f", class token {as_share(grid['per_token_recovered'][block][0])}"
            maps.append((map_HW, f"patch_{direction}{block}_"))
            captions.append(caption)
            rows.append({"direction": direction, "block": block, "all_tokens_recovered": recovered})
    gallery = list(zip(heatmap_files(picture, maps, signed=True), captions, strict=True))
    den = result["denoising"]
    summary = f"Label {readings.escaped(result['label'])} ({what}). "
    if mode == "models":
        first = patching.first_localised_block(den["all_tokens_recovered"])
        beyond = 1 - den["all_tokens_recovered"][-1]
        summary += (
            "Writing the reference's residual stream into the intervened model restores "
            + ", ".join(f"{as_share(s)} after block {b}" for b, s in enumerate(den["all_tokens_recovered"]))
            + (f"; the first block that restores half is **block {first}**" if first is not None else "")
            + f". The {as_share(beyond)} that even the last block does not restore lies after the vision tower "
            "(its head, or the text tower, when the fine-tune changed them)."
        )
    else:
        found = patching.first_localised_token(den["per_token_recovered"])
        n_prefix = workbench.backend.n_prefix_tokens
        if found is None:
            summary += "No single token restores half of the difference after any block."
        else:
            block, token = found
            where = "the class token" if token < n_prefix else f"patch {token - n_prefix}"
            summary += (
                f"The first place where one token alone restores half is **{where} after block {block}** "
                f"({as_share(den['per_token_recovered'][block][token])}). Patching every token restores everything "
                "inside one model, by construction, so the maps show single tokens."
            )
    summary += " Denoising restores from the source; noising is shown apart: the two are not symmetric."
    return summary, gallery, readings.display_table(pd.DataFrame(rows))


def as_share(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.0%}"


def build(app: AppContext, image: gr.Image, labels: gr.Textbox, template: gr.Textbox) -> None:
    if not app.pairs:
        gr.Markdown("No checkpoint pair is offered by this server.")
        return
    gr.Markdown(
        "Compare a **reference** checkpoint with an **intervened** one (fine-tuned, patched, ...): what the shift "
        "did to the answers, which concepts the intervened model uses differently, and in which block the "
        "difference lives (activation patching)."
    )
    with gr.Row():
        pair = gr.Dropdown(list(app.pairs), value=next(iter(app.pairs)), label="Checkpoint pair", scale=2)
        probe = gr.Textbox(label="Probe set", value="64", info=PROBE_HELP, scale=2)
        top_k = gr.Slider(1, 50, value=20, step=1, label="Latents to rank", scale=1)
    diff_button = gr.Button("Diff the checkpoints", variant="primary")
    diff_summary = gr.Markdown()
    with gr.Row():
        behaviour = gr.Dataframe(label="Behaviour per label (reference vs intervened)", interactive=False)
        representation = gr.LinePlot(
            x="block", y="value", color="measure", title="How alike the two models' residual streams are, per block"
        )
    triggers = gr.Dataframe(
        label="Concepts whose presence predicts the change (AUROC: 1 = present exactly on the images that changed)",
        interactive=False,
    )
    latents = gr.Dataframe(
        label="Latents whose use changed most (mean attribution to a label, reference vs intervened)",
        interactive=False,
    )
    report = gr.File(label="Transition report (Markdown and JSON)", file_count="multiple")
    gr.Markdown("### Where: activation patching on the current image")
    with gr.Row():
        mode = gr.Radio(PATCH_MODES, value="models", label="Patch", scale=3)
        counterfactual = ImageInput(label="Counterfactual image (for patching inside one model)", type="filepath",
                                    height=160, scale=1)  # fmt: skip
        corruption = gr.Radio(CORRUPTION_CHOICES, value="counterfactual", label="Corruption", scale=2)
        metric = gr.Radio(["logit_difference", "probability", "kl"], value="logit_difference", label="Metric", scale=1)
    patch_button = gr.Button("Patch")
    patch_summary = gr.Markdown()
    patch_gallery = gr.Gallery(label="Share of the difference restored by patching each token (red: restores)",
                               columns=4, height=260)  # fmt: skip
    patch_table = gr.Dataframe(label="Per block, every token patched at once", interactive=False)

    def diff_handler(pair_name, probe_text, labels_text, template_text, k, image_value, progress=gr.Progress()):
        progress(0.1, desc="running both models over the probe set")
        return run_diff(app, pair_name, probe_text, labels_text, template_text, k, image_value)

    def patch_handler(pair_name, image_value, counterfactual_value, labels_text, template_text, mode_value,
                      corruption_value, metric_value):  # fmt: skip
        return run_patch(app, pair_name, image_value, counterfactual_value, labels_text, template_text, mode_value,
                         corruption_value, metric_value)  # fmt: skip

    diff_outputs = [diff_summary, behaviour, representation, triggers, latents, report]
    event = diff_button.click(
        user_errors(diff_handler), [pair, probe, labels, template, top_k, image], diff_outputs, api_name="diff"
    )
    clear_on_failure(event, diff_outputs)
    patch_outputs = [patch_summary, patch_gallery, patch_table]
    event = patch_button.click(
        user_errors(patch_handler),
        [pair, image, counterfactual, labels, template, mode, corruption, metric],
        patch_outputs,
        api_name="patch",
    )
    clear_on_failure(event, patch_outputs)
