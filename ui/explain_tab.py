"""The Explain tab: a vision-language model says in words what a latent is, by steering it (engine.explain)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from engine import attribution
from engine.explain import (
    DEFAULT_COEFFICIENT,
    NEUTRALS,
    STYLES,
    Explainer,
    ExplainSettings,
    Explanation,
    ExplanationCache,
    cached_explanations,
)
from engine.registry import ExplainPreset
from engine.resident import ResidentSAE
from ui import glossary, readings
from ui.common import (
    AppContext,
    clear_on_failure,
    load_image,
    parse_float_list,
    parse_labels,
    parse_number,
    user_errors,
)

STYLE_CHOICES = [
    ("add the concept to a plain image (Ferrando et al. 2026)", "add"),
    ("clamp it in the SAE's reconstruction (Pach et al. 2025)", "clamp"),
]
assert {v for _, v in STYLE_CHOICES} == set(STYLES)
HOW = """A latent is named by what it **does**, not by the images it fires on: its direction is added into a plain
(white) image inside the model's vision tower, and the language model is asked what it sees. Three controls run
with it: the same question **unsteered**, with a **random** direction of the same size, and with **another
latent**'s direction. An explanation is believable when it differs from all three."""


@dataclass
class ExplainContext:
    """The VLM + SAE pairs the tab offers (each loaded on first use, then resident) and the explanation cache."""

    pairs: dict[str, ExplainPreset]
    load: Callable[[ExplainPreset], Explainer]
    cache: ExplanationCache | None = None

    def preset(self, name: str | None) -> ExplainPreset:
        name = name or next(iter(self.pairs), "")
        if name not in self.pairs:
            raise ValueError(f"unknown vision-language model {name!r}; valid: {', '.join(self.pairs)}")
        return self.pairs[name]

    def explainer(self, name: str | None) -> Explainer:
        return self.load(self.preset(name))

    def explanations(
        self, sae: ResidentSAE, latents: Sequence[int], settings: ExplainSettings | None
    ) -> dict[int, str]:
        """Cached explanations of these latents of ``sae`` by the first pair that reads it (none generated here)."""
        if self.cache is None:
            return {}
        for chosen in self.pairs.values():
            if chosen.sae == sae.spec:
                found = cached_explanations(self.cache, chosen.vlm.name, sae, latents, settings or ExplainSettings())
                return {i: e.steered for i, e in found.items()}
        return {}


def parse_settings(style, coefficient, question, prefix, neutral, seed) -> ExplainSettings:
    seed_text = str(seed if seed is not None else "").strip()
    if seed_text:
        value = parse_number(seed_text, "sampling seed")
        if value != int(value) or value < 0:
            raise ValueError(f"the sampling seed must be a whole number >= 0, or empty for greedy; got {seed!r}")
        seed_value = int(value)
    else:
        seed_value = None
    coefficient_text = str(coefficient if coefficient is not None else "").strip()
    return ExplainSettings(
        style=style or "add",
        coefficient=parse_number(coefficient_text, "coefficient") if coefficient_text else None,
        question=(question or "").strip() or None,
        answer_prefix=prefix if (prefix or "").strip() else None,
        neutral=neutral or "white",
        seed=seed_value,
    )


def parse_explain_latent(value, explainer: Explainer) -> int:
    text = str(value if value is not None else "").strip()
    if not text:
        raise ValueError(f"choose a latent id (0 .. {explainer.d_sae - 1}); Attribution's table selects one")
    number = parse_number(text, "latent id")
    if number != int(number):
        raise ValueError(f"latent id must be a whole number 0 .. {explainer.d_sae - 1}; got {value!r}")
    return explainer.check_latent(int(number))


def controls_table(e: Explanation) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run": [
                "steered (the explanation)",
                "unsteered",
                "random direction, same size",
                f"another latent (#{e.permuted_latent})",
            ],
            "what the model says": [e.steered, e.unsteered, e.random, e.permuted],
        }
    )


def explanation_reading(e: Explanation, label: str) -> str:
    s = e.settings
    name = readings.named(e.latent, label or None)
    how = (
        f"adding {name} into a plain {s.neutral} image at {readings.number(s.coefficient)}x its typical strength"
        if s.style == "add"
        else f"clamping {name} to {readings.number(s.coefficient)}x its typical strength in the SAE's reconstruction of a plain {s.neutral} image"
    )
    said = f"{s.answer_prefix} {e.steered}".strip()
    lines = [f"**Explanation:** {how}, the model says {readings.quoted(said)}."]
    if not e.changed:
        lines.append(
            "⚠️ That is what it says without steering too: at this coefficient the concept does not change the answer. "
            "Try a larger coefficient (the sweep below shows where the text changes)."
        )
    elif e.steered in (e.random, e.permuted):
        lines.append("⚠️ A control says the same, so this text is not specific to this latent: read it with caution.")
    else:
        lines.append(
            f"Unsteered it says {readings.quoted(e.unsteered)}; a random direction of the same size gives "
            f"{readings.quoted(e.random)}; another latent's direction {readings.quoted(e.permuted)}. The explanation "
            "differs from all three, so it comes from this latent's direction."
        )
    if e.cached:
        lines.append("*(from the explanation cache: asked before with the same settings)*")
    return "\n\n".join(lines)


def build(
    app: AppContext, ectx: ExplainContext, model, image, labels, template, selected_latent, refresh_attribution=None
) -> None:
    if not ectx.pairs:
        gr.Markdown("No vision-language model is offered by this server.")
        return
    gr.Markdown(HOW)
    gr.Markdown(
        f"*Vision-language model*: {glossary.explain('vision-language model')}. *Explanation*: "
        f"{glossary.explain('explanation')}. *Controls*: {glossary.explain('control')}."
    )
    with gr.Row():
        pair = gr.Dropdown(
            list(ectx.pairs), value=next(iter(ectx.pairs)), label="Vision-language model and SAE", scale=2
        )
        pair_info = gr.Markdown(describe(ectx.pairs[next(iter(ectx.pairs))]))
    with gr.Row():
        style = gr.Radio(STYLE_CHOICES, value="add", label="Method", scale=2)
        coefficient = gr.Textbox(
            label="Coefficient", value=str(DEFAULT_COEFFICIENT["add"]), max_lines=1, scale=1,
            info=f"Coefficient: {glossary.explain('coefficient')}.",
        )  # fmt: skip
        neutral = gr.Radio(list(NEUTRALS), value="white", label="Neutral image", scale=1)
    with gr.Accordion("Prompt and decoding", open=False):
        question = gr.Textbox(label="Question (blank: the method's own)", max_lines=2)
        prefix = gr.Textbox(label="Answer starts with (blank: the method's own)", max_lines=1)
        seed = gr.Textbox(label="Sampling seed (blank: greedy decoding)", max_lines=1)
    run = gr.Button("Explain the selected latent", variant="primary")
    reading = gr.Markdown()
    table = gr.Dataframe(label="The explanation and its controls", interactive=False, wrap=True)
    with gr.Row():
        coefficients = gr.Textbox(label="Coefficient sweep", value="0, 1, 2, 4, 8, 16, 32", max_lines=1, scale=3)
        sweep_button = gr.Button("Sweep", scale=1)
    sweep_reading = gr.Markdown()
    sweep_table = gr.Dataframe(label="What the model says at each coefficient", interactive=False, wrap=True)
    gr.Markdown("### Explain the top latents of the current attribution")
    with gr.Row():
        top_k = gr.Slider(1, 20, value=5, step=1, label="How many latents", scale=2)
        top_button = gr.Button("Explain the top latents", scale=1)
    top_reading = gr.Markdown()
    top_table = gr.Dataframe(label="Top latents with their explanations", interactive=False, wrap=True)
    settings_inputs = [style, coefficient, question, prefix, neutral, seed]

    def explain(pair_name, latent, *settings_values):
        explainer = ectx.explainer(pair_name)
        result = explainer.explain(parse_explain_latent(latent, explainer), parse_settings(*settings_values))
        label = explainer.label(result.latent)
        return explanation_reading(result, label), controls_table(result)

    def sweep(pair_name, latent, coefficient_text, *settings_values):
        explainer = ectx.explainer(pair_name)
        index = parse_explain_latent(latent, explainer)
        values = parse_float_list(coefficient_text, "coefficient")
        points = explainer.sweep(index, values, parse_settings(*settings_values))
        frame = pd.DataFrame(
            {"coefficient": [p.coefficient for p in points], "what the model says": [p.text for p in points]}
        )
        return sweep_summary(points), readings.display_table(frame)

    def explain_top(
        pair_name, model_name, image_value, labels_text, template_text, k, *settings_values, progress=gr.Progress()
    ):
        chosen_pair = ectx.pairs[pair_name] if pair_name in ectx.pairs else None
        ctx = app.model(model_name)
        if chosen_pair is None or chosen_pair.sae != app.choices[model_name or app.default].sae:
            raise ValueError(
                f"the Explain tab's SAE ({chosen_pair.sae.display_name if chosen_pair else pair_name}) is not the SAE "
                f"of the model in use ({app.choices[model_name or app.default].sae.display_name}): its latents are "
                "other latents. Choose the matching pair, or explain latent ids of that SAE one at a time"
            )
        explainer = ectx.explainer(pair_name)
        settings = parse_settings(*settings_values)
        picture = load_image(image_value)
        result = attribution.attribute(
            ctx.workbench, picture, parse_labels(labels_text), None, "logit_difference", template_text or None
        )
        latents = result.top(int(parse_number(k, "how many latents")))
        progress((0, len(latents)), desc="explaining")
        done = explainer.explain_many(
            latents, settings, progress=lambda n, total: progress((n, total), desc="explaining")
        )
        frame = pd.DataFrame(
            {
                "latent": [e.latent for e in done],
                "label": [explainer.label(e.latent) for e in done],
                "attribution": [float(result.scores_S[e.latent]) for e in done],
                "explanation": [e.steered for e in done],
                "unsteered": [e.unsteered for e in done],
                "random": [e.random for e in done],
                "another latent": [e.permuted for e in done],
            }
        )
        specific = sum(e.changed and e.steered not in (e.random, e.permuted) for e in done)
        summary = (
            f"Explained the {len(done)} latents that matter most for this image; {specific} of them give a text that "
            "differs from all three controls. The Attribution table now shows each explanation."
        )
        return summary, readings.display_table(frame), settings

    state = gr.State(None)
    pair.change(lambda name: describe(ectx.pairs[name]) if name in ectx.pairs else "", pair, pair_info, api_name=False)
    style.change(lambda s: str(DEFAULT_COEFFICIENT.get(s, 8.0)), style, coefficient, api_name=False)
    event = run.click(
        user_errors(explain), [pair, selected_latent, *settings_inputs], [reading, table], api_name="explain"
    )
    clear_on_failure(event, [reading, table])
    swept = sweep_button.click(
        user_errors(sweep),
        [pair, selected_latent, coefficients, *settings_inputs],
        [sweep_reading, sweep_table],
        api_name="explain_sweep",
    )
    clear_on_failure(swept, [sweep_reading, sweep_table])
    batch = top_button.click(
        user_errors(explain_top),
        [pair, model, image, labels, template, top_k, *settings_inputs],
        [top_reading, top_table, state],
        api_name="explain_top",
    )
    clear_on_failure(batch, [top_reading, top_table])
    if refresh_attribution is not None:
        refresh_attribution(batch, state)


def sweep_summary(points) -> str:
    if not points:
        return ""
    first = points[0]
    changes = [p for p in points[1:] if p.text != first.text]
    if not changes:
        return f"The model says {readings.quoted(first.text)} at every coefficient of the sweep."
    at = changes[0]
    return (
        f"At coefficient {readings.number(first.coefficient)} the model says {readings.quoted(first.text)}; the text first "
        f"changes at {readings.number(at.coefficient)}: {readings.quoted(at.text)}."
    )


def describe(chosen: ExplainPreset) -> str:
    sources = " · ".join(f"[source]({url})" for url in chosen.sources)
    return (
        f"**{chosen.name}**: {chosen.description}. VLM **{chosen.vlm.display_name}** · SAE {chosen.sae.display_name}"
        + (f" · memory: {chosen.memory}" if chosen.memory else "")
        + (f" · {sources}" if sources else "")
    )
