"""Checkpoint diffs: explain what changed between a reference model and an intervened one, and where.

Fine-tuning (or RL, or a patch) changes behaviour, and the question is about the *shift*, not about either
model alone (Delta-XAI, arXiv 2602.02304: a transition report that is comparable, valid and actionable). On
a probe set of images this module measures, for two models of one architecture that share one SAE:

1. **behaviour**: accuracy per label (where the truth is known), prediction flips, the KL divergence between
   the two output distributions per image, and the images that shifted most;
2. **representation per block**: linear CKA (Kornblith et al. 2019) and the mean cosine between the two
   models' residual streams after each block, over the probe set's tokens. CKA near 1 means the block's
   representation is the same up to rotation and scale; a drop localises where the models part;
3. **latents**: the reference model's SAE read on both models' activations at its site (one dictionary, so
   latent i means the same direction in both). Per latent: how often it fires and how strongly, and its mean
   attribution to each label's centred logit (engine.attribution, with the error term kept), in each model. Latents are
   ranked by the largest change of mean attribution over the labels: a latent whose *use* changed (the
   intervened model now reads it for another answer) ranks high even if it fires as often as before;
4. **causal localisation**: activation patching between the two models (engine.patching) on one image,
   per block and per token: denoising writes the reference's residual stream into the intervened run (is
   the reference's state here sufficient to undo the shift?), noising the other way (is the intervened
   state here necessary for it?), reported apart.

The report names what changed, where, the evidence and the caveats, as Markdown and JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from engine import attribution, patching, vocabulary, zeroshot
from engine.errors import UnknownChoiceError, UserInputError
from engine.resident import Workbench
from engine.stats import auroc_matrix

TOP_SHIFTED = 8


@dataclass(frozen=True)
class DiffPair:
    """A reference and an intervened workbench over one SAE (same spec, same site)."""

    reference: Workbench
    intervened: Workbench

    def __post_init__(self) -> None:
        ref, new = self.reference, self.intervened
        if ref.sae_spec != new.sae_spec or ref.site != new.site:
            raise UserInputError(
                f"a diff reads both models with one SAE: got {ref.sae_spec.display_name} @ {ref.site} and "
                f"{new.sae_spec.display_name} @ {new.site}"
            )
        same = (ref.backend.n_blocks, ref.backend.d_model, ref.backend.grid)
        other = (new.backend.n_blocks, new.backend.d_model, new.backend.grid)
        if same != other:
            raise UserInputError(
                f"the two checkpoints must share one architecture (blocks, width, patch grid): "
                f"{ref.model_spec.display_name} has {same}, {new.model_spec.display_name} has {other}"
            )


@torch.no_grad()
def behaviour_shift(
    pair: DiffPair,
    images: Sequence[Image.Image],
    labels: list[str],
    template: str | None = None,
    truth: Sequence[int | None] | None = None,
) -> dict:
    """Per label accuracy (where ``truth`` is known) and predictions in each model, flips, KL per image."""
    logits_ref_NL = pair.reference.predict(list(images), labels, template)
    logits_new_NL = pair.intervened.predict(list(images), labels, template)
    pred_ref, pred_new = logits_ref_NL.argmax(-1).tolist(), logits_new_NL.argmax(-1).tolist()
    kl_N = (logits_ref_NL.softmax(-1) * (logits_ref_NL.log_softmax(-1) - logits_new_NL.log_softmax(-1))).sum(-1)
    rows = zeroshot.per_label_comparison(
        labels, {"reference": pred_ref, "intervened": pred_new}, list(truth) if truth is not None else None
    )
    flips = [i for i, (a, b) in enumerate(zip(pred_ref, pred_new)) if a != b]
    order = kl_N.argsort(descending=True).tolist()[:TOP_SHIFTED]
    return {
        "per_label": rows,
        "flips": flips,
        "flip_rate": len(flips) / len(images),
        "kl_mean": float(kl_N.mean()),
        "kl": kl_N.tolist(),
        "most_shifted": [
            {"index": i, "kl": float(kl_N[i]), "reference": labels[pred_ref[i]], "intervened": labels[pred_new[i]]}
            for i in order
        ],
    }


def linear_cka(x_ND: torch.Tensor, y_ND: torch.Tensor) -> float:
    """Linear CKA between two sets of vectors for the same N inputs (1: the same up to rotation and scale).

    >>> x = torch.randn(50, 4)
    >>> round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(4, 4))[0]), 4)
    1.0
    """
    x_ND, y_ND = x_ND.double() - x_ND.double().mean(0), y_ND.double() - y_ND.double().mean(0)
    cross = (y_ND.T @ x_ND).pow(2).sum()
    norm = (x_ND.T @ x_ND).pow(2).sum().sqrt() * (y_ND.T @ y_ND).pow(2).sum().sqrt()
    return float(cross / norm) if norm > 0 else float("nan")


class CKAAccumulator:
    """Linear CKA and mean cosine between two streams of row vectors, accumulated chunk by chunk in float64 (the
    probe set never has to fit in memory at once): ``X^T X``, ``Y^T Y``, ``Y^T X`` and the column sums suffice,
    since centring subtracts ``n * mean mean^T``."""

    def __init__(self, d_model: int):
        self.n, self.cosine_sum = 0, 0.0
        self.sum_x, self.sum_y = torch.zeros(d_model, dtype=torch.float64), torch.zeros(d_model, dtype=torch.float64)
        self.xx, self.yy, self.yx = (torch.zeros(d_model, d_model, dtype=torch.float64) for _ in range(3))

    def add(self, x_ND: torch.Tensor, y_ND: torch.Tensor) -> None:
        x_ND, y_ND = x_ND.double().cpu(), y_ND.double().cpu()
        self.n += x_ND.shape[0]
        self.sum_x += x_ND.sum(0)
        self.sum_y += y_ND.sum(0)
        self.xx += x_ND.T @ x_ND
        self.yy += y_ND.T @ y_ND
        self.yx += y_ND.T @ x_ND
        self.cosine_sum += float(torch.nn.functional.cosine_similarity(x_ND, y_ND, dim=-1).sum())

    def result(self) -> tuple[float, float]:
        mean_x, mean_y = self.sum_x / self.n, self.sum_y / self.n
        xx = self.xx - self.n * torch.outer(mean_x, mean_x)
        yy = self.yy - self.n * torch.outer(mean_y, mean_y)
        yx = self.yx - self.n * torch.outer(mean_y, mean_x)
        norm = xx.pow(2).sum().sqrt() * yy.pow(2).sum().sqrt()
        cka = float(yx.pow(2).sum() / norm) if norm > 0 else float("nan")
        return cka, self.cosine_sum / self.n


@torch.no_grad()
def representation_shift(pair: DiffPair, images: Sequence[Image.Image], chunk: int = 16) -> list[dict]:
    """Per block: linear CKA and mean cosine between the two models' residual streams (all tokens), computed
    ``chunk`` images at a time."""
    n_blocks = pair.reference.backend.n_blocks
    accumulators = [CKAAccumulator(pair.reference.backend.d_model) for _ in range(n_blocks)]
    for start in range(0, len(images), chunk):
        batch = list(images[start : start + chunk])
        per_model = []
        for workbench in (pair.reference, pair.intervened):
            with workbench.lock:
                x_BTD = workbench.backend.embed(workbench.pixels(batch))
                per_block = []
                for block in range(n_blocks):
                    x_BTD = workbench.backend.blocks(x_BTD, block, block + 1)
                    per_block.append(x_BTD.flatten(0, 1))
            per_model.append(per_block)
        for accumulator, ref_ND, new_ND in zip(accumulators, *per_model):
            accumulator.add(ref_ND, new_ND)
    rows = []
    for block, accumulator in enumerate(accumulators):
        cka, cosine = accumulator.result()
        rows.append({"block": block, "cka": cka, "cosine": cosine})
    return rows


def mean_attribution(workbench: Workbench, images: Sequence[Image.Image], labels: list[str], template) -> torch.Tensor:
    """(L, S) each latent's attribution to each label, averaged over the images. The metric is the label's
    centred logit (its logit minus the mean logit): a fixed contrast, so a latent's attribution to a label does
    not change merely because the other model's runner-up label is another one."""
    text_emb_LE = workbench.text_embeddings(labels, template)
    total_LS = torch.zeros(len(labels), workbench.d_sae)
    with workbench.lock:
        for state in workbench.site_states(list(images)):
            for j in range(len(labels)):
                _, _, _, scores_TS = attribution.attribute_state(workbench, state, text_emb_LE, j, "centred_logit")
                total_LS[j] += scores_TS.sum(0).float().cpu()
    return total_LS / len(images)


@torch.no_grad()
def activation_stats(workbench: Workbench, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """(frequency_S, mean_S): share of tokens each latent fires on, and its mean activation where it fires."""
    fired_S = torch.zeros(workbench.d_sae)
    total_S = torch.zeros(workbench.d_sae)
    n_tokens = 0
    for state in workbench.site_states(list(images)):
        f_TS = state.f_TS.float().cpu()
        fired_S += (f_TS != 0).sum(0)
        total_S += f_TS.sum(0)
        n_tokens += f_TS.shape[0]
    return fired_S / n_tokens, total_S / fired_S.clamp(min=1)


@torch.no_grad()
def trigger_latents(
    pair: DiffPair, images: Sequence[Image.Image], behaviour: dict, template: str | None = None, top: int = 20
) -> list[dict]:
    """Concepts whose presence predicts the shift: the reference's latents ranked by how well their strength on an
    image (its maximum over tokens) tells the images whose answer changed from those whose answer did not
    (AUROC; 1 = present on every changed image and absent elsewhere). Without any changed answer, the images
    whose output distribution moved most (KL above the median) stand in for the changed ones."""
    changed_N = np.zeros(len(images), dtype=bool)
    changed_N[behaviour["flips"]] = True
    outcome = "changed answer"
    if changed_N.all() or not changed_N.any():
        kl_N = np.asarray(behaviour["kl"])
        changed_N = kl_N > np.median(kl_N)
        outcome = "output moved more than the median (KL)"
    if changed_N.all() or not changed_N.any():
        return []
    strength_NS = torch.stack([s.f_TS.amax(0).float().cpu() for s in pair.reference.site_states(list(images))])
    auroc_S = auroc_matrix(strength_NS.numpy(), changed_N[:, None])[:, 0]
    order = np.argsort(-auroc_S, kind="stable")[:top].tolist()
    names = vocabulary.latent_names(pair.reference, order, template)
    fires_N = strength_NS[:, order] != 0
    return [
        {
            "rank": rank + 1,
            "latent": i,
            "name": names[i][0],
            "auroc": float(auroc_S[i]),
            "outcome": outcome,
            "present_on_changed": float(fires_N[torch.from_numpy(changed_N), k].float().mean()),
            "present_on_unchanged": float(fires_N[torch.from_numpy(~changed_N), k].float().mean()),
        }
        for rank, (k, i) in enumerate(zip(range(len(order)), order))
    ]


def latent_shift(
    pair: DiffPair, images: Sequence[Image.Image], labels: list[str], template: str | None = None, top: int = 20
) -> list[dict]:
    """Latents ranked by the largest change of mean attribution to any label, with their activation shifts."""
    attr_ref_LS = mean_attribution(pair.reference, images, labels, template)
    attr_new_LS = mean_attribution(pair.intervened, images, labels, template)
    freq_ref, mean_ref = activation_stats(pair.reference, images)
    freq_new, mean_new = activation_stats(pair.intervened, images)
    delta_LS = attr_new_LS - attr_ref_LS
    shift_S, label_S = delta_LS.abs().max(0)
    order = shift_S.argsort(descending=True)[:top].tolist()
    names = vocabulary.latent_names(pair.reference, order, template)
    return [
        {
            "rank": rank + 1,
            "latent": i,
            "name": names[i][0],
            "label": labels[int(label_S[i])],
            "attribution_reference": float(attr_ref_LS[label_S[i], i]),
            "attribution_intervened": float(attr_new_LS[label_S[i], i]),
            "attribution_shift": float(delta_LS[label_S[i], i]),
            "frequency_reference": float(freq_ref[i]),
            "frequency_intervened": float(freq_new[i]),
            "mean_reference": float(mean_ref[i]),
            "mean_intervened": float(mean_new[i]),
        }
        for rank, i in enumerate(order)
    ]


@torch.no_grad()
def patch_models(
    pair: DiffPair,
    image: Image.Image,
    labels: list[str],
    template: str | None = None,
    label: int | None = None,
    metric: str = "logit_difference",
) -> dict:
    """Denoising (the reference's residual stream written into the intervened run) and noising (the other
    way), per block and per token, for ``label`` (the reference's answer when None)."""
    runs = []
    for workbench in (pair.reference, pair.intervened):
        with workbench.lock:
            text_emb_LE = workbench.text_embeddings(labels, template)
            runs.append(patching.run(workbench.backend, workbench.pixels([image]), text_emb_LE, workbench.dtype))
    ref_run, new_run = runs
    label = int(ref_run.logits_L.argmax()) if label is None else label
    out = {"label": labels[label], "metric": metric}
    for name, source, target, workbench in (
        ("denoising", ref_run, new_run, pair.intervened),
        ("noising", new_run, ref_run, pair.reference),
    ):
        with workbench.lock:
            text_emb_LE = workbench.text_embeddings(labels, template)
            out[name] = patching.patch_grid(
                workbench.backend, source, target, text_emb_LE, label, metric, dtype=workbench.dtype
            )
    out["predicted_reference"] = labels[int(ref_run.logits_L.argmax())]
    out["predicted_intervened"] = labels[int(new_run.logits_L.argmax())]
    return out


def transition_report(
    pair: DiffPair,
    behaviour: dict,
    representation: list[dict],
    latents: list[dict],
    patch: dict | None,
    probe: str,
    triggers: list[dict] | None = None,
) -> tuple[str, dict]:
    """(markdown, json) of what changed, where, the evidence and the caveats."""
    ref, new = pair.reference.model_spec.display_name, pair.intervened.model_spec.display_name
    triggers = triggers or []
    facts = {
        "reference": ref,
        "intervened": new,
        "sae": pair.reference.sae_spec.display_name,
        "site": pair.reference.site,
        "probe_set": probe,
        "behaviour": behaviour,
        "representation": representation,
        "triggers": triggers,
        "latents": latents,
        "patching": patch,
    }
    lines = [
        f"# Transition report: {ref} -> {new}",
        "",
        f"Probe set: {probe}. SAE: {facts['sae']} at `{facts['site']}` (one dictionary read on both models).",
        "",
        "## What changed",
        f"- Predictions changed on {len(behaviour['flips'])} of the probe images "
        f"({behaviour['flip_rate']:.0%}); mean KL between the two output distributions {behaviour['kl_mean']:.3g}.",
    ]
    if triggers:
        top = triggers[0]
        lines.append(
            f"- Most telling concept: latent {top['latent']} ({top['name']}). Its presence in an image predicts a "
            f"{top['outcome']} with AUROC {top['auroc']:.2f} (present on {top['present_on_changed']:.0%} of those "
            f"images, on {top['present_on_unchanged']:.0%} of the others)."
        )
    for row in behaviour["per_label"]:
        counts = f"predicted {row['predicted_reference']} -> {row['predicted_intervened']} times"
        if "accuracy_reference" in row:
            accuracy = f"accuracy {row['accuracy_reference']:.0%} -> {row['accuracy_intervened']:.0%}; "
            lines.append(f"- `{row['label']}`: {accuracy}{counts}")
        else:
            lines.append(f"- `{row['label']}`: {counts}")
    lines += ["", "## Which concepts", "Concepts whose presence predicts the change (the reference's latents):"]
    lines += [
        f"{row['rank']}. latent {row['latent']} ({row['name']}): AUROC {row['auroc']:.2f}, present on "
        f"{row['present_on_changed']:.0%} of the changed images and {row['present_on_unchanged']:.0%} of the others"
        for row in triggers[:10]
    ]
    lines += ["", "Latents whose use changed most (mean attribution to a label's centred logit):"]
    lines += [
        f"{row['rank']}. latent {row['latent']} ({row['name']}): attribution to `{row['label']}` "
        f"{row['attribution_reference']:.3g} -> {row['attribution_intervened']:.3g}; fires on "
        f"{row['frequency_reference']:.1%} -> {row['frequency_intervened']:.1%} of tokens"
        for row in latents[:10]
    ]
    lines += ["", "## Where"]
    lines += [f"- block {r['block']}: CKA {r['cka']:.3f}, mean cosine {r['cosine']:.3f}" for r in representation]
    if patch is not None:
        den = patch["denoising"]["all_tokens_recovered"]
        first = patching.first_localised_block(den)
        lines.append(
            f"- Patching on the current image (label `{patch['label']}`): writing the reference's residual stream "
            "into the intervened model restores "
            + ", ".join(f"{s:.0%} after block {b}" for b, s in enumerate(den) if not math.isnan(s))
            + (f"; the first block restoring half is {first}." if first is not None else "; no block restores half.")
        )
    lines += [
        "",
        "## Caveats",
        "- A concept that predicts the change is a correlate on this probe set; check it by steering or patching.",
        "- Attribution is a first-order estimate; the ranking is a hypothesis to check by steering the latent.",
        "- One SAE (trained on the reference) reads both models: a concept the intervened model created anew may "
        "have no latent, and shows only as a lower explained variance.",
        "- The probe set bounds what can be seen: a shift on inputs it does not contain is invisible here.",
    ]
    return "\n".join(lines) + "\n", facts


def compare(
    pair: DiffPair,
    images: Sequence[Image.Image],
    labels: list[str],
    template: str | None = None,
    truth: Sequence[int | None] | None = None,
    probe: str = "probe set",
    top: int = 20,
    patch_image: Image.Image | None = None,
) -> dict:
    """Everything the Diff tab shows for a probe set: behaviour, representation, latents, and the report (with
    the patching of ``patch_image`` between the models when one is given)."""
    if len(images) < 2:
        raise UserInputError(f"a probe set needs at least two images; got {len(images)}")
    behaviour = behaviour_shift(pair, images, labels, template, truth)
    representation = representation_shift(pair, images)
    latents = latent_shift(pair, images, labels, template, top)
    triggers = trigger_latents(pair, images, behaviour, template, top)
    patch = patch_models(pair, patch_image, labels, template) if patch_image is not None else None
    markdown, facts = transition_report(pair, behaviour, representation, latents, patch, probe, triggers)
    return {
        "behaviour": behaviour,
        "representation": representation,
        "triggers": triggers,
        "latents": latents,
        "patching": patch,
        "report_markdown": markdown,
        "report": facts,
    }


CORRUPTIONS = ("counterfactual", "gaussian_noise")
NOISE_STD = 0.5  # in units of the model's normalised pixels


@torch.no_grad()
def patch_within(
    workbench: Workbench,
    clean: Image.Image,
    counterfactual: Image.Image | None,
    labels: list[str],
    template: str | None = None,
    label: int | None = None,
    metric: str = "logit_difference",
    corruption: str = "counterfactual",
    seed: int = 0,
) -> dict:
    """Patching inside one model: the clean image against its counterfactual (in distribution, the default),
    or against Gaussian noise added to the pixels (out of distribution, labelled so). Denoising writes the clean
    run into the corrupted one; noising the other way."""
    if corruption not in CORRUPTIONS:
        raise UnknownChoiceError("corruption", corruption, CORRUPTIONS)
    if corruption == "counterfactual" and counterfactual is None:
        raise UserInputError(
            "give a counterfactual image (the same scene with the one thing changed), or choose "
            "gaussian_noise (out of distribution)"
        )
    with workbench.lock:
        text_emb_LE = workbench.text_embeddings(labels, template)
        pixels_clean = workbench.pixels([clean])
        if corruption == "counterfactual":
            pixels_corrupt = workbench.pixels([counterfactual])
        else:
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(pixels_clean.shape, generator=generator).to(pixels_clean)
            pixels_corrupt = pixels_clean + NOISE_STD * noise
        backend = workbench.backend
        clean_run = patching.run(backend, pixels_clean, text_emb_LE, workbench.dtype)
        corrupt_run = patching.run(backend, pixels_corrupt, text_emb_LE, workbench.dtype)
        label = int(clean_run.logits_L.argmax()) if label is None else label
        out = {
            "label": labels[label],
            "metric": metric,
            "corruption": corruption,
            "out_of_distribution": corruption == "gaussian_noise",
            "predicted_clean": labels[int(clean_run.logits_L.argmax())],
            "predicted_corrupted": labels[int(corrupt_run.logits_L.argmax())],
            "denoising": patching.patch_grid(
                backend, clean_run, corrupt_run, text_emb_LE, label, metric, dtype=workbench.dtype
            ),
            "noising": patching.patch_grid(
                backend, corrupt_run, clean_run, text_emb_LE, label, metric, dtype=workbench.dtype
            ),
        }
    return out
