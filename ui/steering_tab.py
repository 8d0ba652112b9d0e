"""The Steering tab: suppress, amplify or add concepts and watch the prediction move."""

from __future__ import annotations

import gradio as gr
import numpy as np
import pandas as pd

from engine import steering
from ui import glossary, readings
from ui.common import (
    AppContext,
    ModelContext,
    clear_on_failure,
    load_image,
    parse_float_list,
    parse_int_list,
    parse_labels,
    parse_latent,
    parse_number,
    user_errors,
    warning_markdown,
)

MODE_CHOICES = [
    ("scale (0 removes, 1 unchanged, >1 amplifies)", "scale"),
    ("add (in units of typical activation)", "add"),
]
MAX_SWEEP_POINTS = 64


def parse_edit(ctx: ModelContext, latents_text, strengths_text, mode, patches_text) -> steering.Edit:
    latents = [parse_latent(v, ctx.workbench) for v in parse_int_list(latents_text, "latent ids")]
    if not latents:
        raise ValueError(f"choose at least one latent id (0 .. {ctx.workbench.d_sae - 1})")
    strengths = parse_float_list(strengths_text, "strength")
    if len(strengths) == 1:
        strengths = strengths * len(latents)
    patches = parse_int_list(patches_text, "patch indices")
    return steering.Edit(tuple(latents), tuple(strengths), mode or "scale", tuple(patches) if patches else None)


def run_steer(ctx: ModelContext, image, labels_text, template, latents_text, strengths_text, mode, patches_text):
    """Handler behind the `steer` endpoint: before/after probabilities."""
    edit = parse_edit(ctx, latents_text, strengths_text, mode, patches_text)
    labels = parse_labels(labels_text)
    picture = load_image(image)
    result = steering.steer(ctx.workbench, picture, labels, edit, template or None)
    table = pd.DataFrame({"label": labels, "before": result["before"], "after": result["after"]})
    table = table.sort_values("before", ascending=False, kind="stable").reset_index(drop=True)
    summary = f"**Before:** {result['predicted_before']} → **after:** {result['predicted_after']}"
    names = {i: name for i, (name, *_) in ctx.latent_names(list(edit.latents), template or None).items()}
    phrase = readings.edit_phrase(edit.latents, edit.strengths, edit.mode, names)
    if edit.patches:
        phrase += f" at patches {', '.join(str(p) for p in edit.patches)}"
    reading = warning_markdown(result["warnings"])
    reading += readings.steer_reading(labels, result["before"], result["after"], phrase)
    return readings.display_table(table), side_by_side(table), summary, reading


def side_by_side(table: pd.DataFrame) -> pd.DataFrame:
    """The before/after chart's data: one bar per label and run, before beside after (a bar chart with a colour
    per run would stack them), labels in the table's order."""
    rows = [
        {"bar": f"{label} ({run})", "probability": probability, "run": run}
        for label, before, after in zip(table["label"], table["before"], table["after"], strict=True)
        for run, probability in (("before", before), ("after", after))
    ]
    return pd.DataFrame(rows)


def strengths_grid(s_min, s_max, n_points) -> list[float]:
    low, high = parse_number(s_min, "lowest strength"), parse_number(s_max, "highest strength")
    n = int(parse_number(n_points, "number of strengths"))
    if not 2 <= n <= MAX_SWEEP_POINTS:
        raise ValueError(f"number of strengths must be within 2 .. {MAX_SWEEP_POINTS}; got {n}")
    if low >= high:
        raise ValueError(f"the lowest strength must be below the highest; got {low} and {high}")
    if max(abs(low), abs(high)) > steering.MAX_ABS_STRENGTH:
        raise ValueError(f"strengths must lie within +-{steering.MAX_ABS_STRENGTH:g}")
    return np.linspace(low, high, n).round(6).tolist()


def run_sweep(
    ctx: ModelContext, image, labels_text, template, latent, s_min, s_max, n_points, mode, patches_text, metric
):
    """Handler behind the `sweep` endpoint: the metric against strength, for the latent and a random direction."""
    workbench = ctx.workbench
    latent = parse_latent(latent, workbench)
    strengths = strengths_grid(s_min, s_max, n_points)
    patches = parse_int_list(patches_text, "patch indices")
    result = steering.sweep(
        workbench, load_image(image), parse_labels(labels_text), latent, strengths,
        mode=mode or "scale", patches=tuple(patches) if patches else None, template=template or None,
    )  # fmt: skip
    metric = metric or "logit_difference"
    if metric not in ("logit_difference", "probability", "kl"):
        raise ValueError(f"unknown metric {metric!r}; valid: logit_difference, probability, kl")
    rows = []
    for curve in ("latent", "random"):
        for i, s in enumerate(result["strengths"]):
            rows.append(
                {
                    "strength": s,
                    "curve": f"latent {latent}" if curve == "latent" else "random direction (same norm)",
                    "logit_difference": result[curve]["logit_difference"][i],
                    "probability": result[curve]["probability"][i],
                    "kl": result[curve]["kl"][i],
                    "predicted": result[curve]["predicted"][i],
                }
            )
    frame = pd.DataFrame(rows)
    plot = frame[["strength", "curve", metric]].rename(columns={metric: "value"})
    reference = 1.0 if (mode or "scale") == "scale" else 0.0
    summary = f"Target **{result['target']}**. " + readings.sweep_reading(
        result["strengths"], result["latent"]["predicted"], result["target"], reference
    )
    if any(p != result["target"] for p in result["random"]["predicted"]):
        summary += " A random direction of the same size also changes the answer somewhere in this range."
    else:
        summary += " A random direction of the same size never changes the answer in this range."
    return readings.display_table(frame), plot, summary


def run_ripple(ctx: ModelContext, labels_text, template, latents_text, strengths_text, mode, patches_text):
    """Handler behind `ripple`: the same edit on a held-out batch, per label."""
    if ctx.heldout is None:
        raise ValueError("no held-out batch is available for this model")
    edit = parse_edit(ctx, latents_text, strengths_text, mode, patches_text)
    labels = parse_labels(labels_text)
    images, truth = ctx.heldout(labels)
    rows = steering.ripple(ctx.workbench, images, labels, edit, truth, template or None)
    return readings.display_table(pd.DataFrame(rows))


def build(
    app: AppContext,
    model: gr.Dropdown,
    image: gr.Image,
    labels: gr.Textbox,
    template: gr.Textbox,
    selected_latent: gr.Textbox,
    parts: dict | None = None,
) -> None:
    with gr.Row():
        latents = gr.Textbox(
            label="Latent ids (comma-separated)",
            placeholder="e.g. 12, 40",
            scale=2,
            info=f"A latent is {glossary.explain('latent')}.",
        )
        strengths = gr.Textbox(
            label="Strengths (one, or one per latent)", value="0", scale=2, info=glossary.explain("strength") + "."
        )
        mode = gr.Radio(
            MODE_CHOICES,
            value="scale",
            label="Mode",
            scale=3,
            info="Scale changes a concept the image already has; add switches on one it lacks.",
        )
        patches = gr.Textbox(
            label="Patches (blank: all)",
            placeholder="e.g. 0, 1, 6",
            scale=1,
            info=f"A patch is {glossary.explain('patch')}.",
        )
    with gr.Row():
        steer_button = gr.Button("Steer", variant="primary")
        ripple_button = gr.Button("Ripple effects on held-out images")
    steer_reading = gr.Markdown()
    steer_summary = gr.Markdown()
    with gr.Row():
        steer_plot = gr.BarPlot(
            x="bar", y="probability", color="run", title="Before / after (side by side per label)", y_lim=[0, 1]
        )
        steer_table = gr.Dataframe(label="Probabilities before and after", interactive=False)
    ripple_table = gr.Dataframe(label="Ripple effects: the same edit on a held-out batch", interactive=False)
    gr.Markdown(f"*Ripple effects*: {glossary.explain('ripple effects')}.")
    gr.Markdown("### Strength sweep (one batched pass, with a random norm-matched direction as baseline)")
    gr.Markdown(f"*Norm-matched random direction*: {glossary.explain('norm-matched')}.")
    with gr.Row():
        sweep_latent = gr.Number(label="Latent id", precision=0)
        s_min = gr.Number(label="From", value=-1.0)
        s_max = gr.Number(label="To", value=3.0)
        n_points = gr.Slider(2, MAX_SWEEP_POINTS, value=16, step=1, label="Strengths")
        metric = gr.Radio(
            ["logit_difference", "probability", "kl"],
            value="logit_difference",
            label="Plot",
            info=f"logit_difference: {glossary.explain('logit difference')}; kl: {glossary.explain('KL')}.",
        )
    sweep_button = gr.Button("Sweep")
    sweep_summary = gr.Markdown()
    sweep_plot = gr.LinePlot(x="strength", y="value", color="curve", title="Metric against strength")
    sweep_table = gr.Dataframe(label="Sweep", interactive=False)

    def steer(image, labels_text, template_text, latents_text, strengths_text, mode_value, patches_text, model_name):
        ctx = app.model(model_name)
        return run_steer(ctx, image, labels_text, template_text, latents_text, strengths_text, mode_value, patches_text)

    def sweep(image, labels_text, template_text, latent, low, high, n, mode_value, patches_text, metric_value,
              model_name, progress=gr.Progress()):  # fmt: skip
        ctx = app.model(model_name)
        progress(0.1, desc="sweeping in one batched pass")
        return run_sweep(
            ctx, image, labels_text, template_text, latent, low, high, n, mode_value, patches_text, metric_value
        )

    def ripple(labels_text, template_text, latents_text, strengths_text, mode_value, patches_text, model_name,
               progress=gr.Progress()):  # fmt: skip
        ctx = app.model(model_name)
        progress(0.1, desc="applying the edit to the held-out batch")
        return run_ripple(ctx, labels_text, template_text, latents_text, strengths_text, mode_value, patches_text)

    steer_outputs = [steer_table, steer_plot, steer_summary, steer_reading]
    sweep_outputs = [sweep_table, sweep_plot, sweep_summary]
    events = [
        steer_button.click(
            user_errors(steer),
            [image, labels, template, latents, strengths, mode, patches, model],
            steer_outputs,
            api_name="steer",
        ),
        sweep_button.click(
            user_errors(sweep),
            [image, labels, template, sweep_latent, s_min, s_max, n_points, mode, patches, metric, model],
            sweep_outputs,
            api_name="sweep",
        ),
        ripple_button.click(
            user_errors(ripple),
            [labels, template, latents, strengths, mode, patches, model],
            ripple_table,
            api_name="ripple",
        ),
    ]
    for event, cleared in zip(events, (steer_outputs, sweep_outputs, [ripple_table]), strict=True):
        clear_on_failure(event, cleared)

    def carry(value):
        text = str(value or "").strip()
        return (text, int(text)) if text.isdigit() else (gr.update(), gr.update())

    selected_latent.change(
        carry,
        selected_latent,
        [latents, sweep_latent],
        api_name=False,
    )
    if parts is not None:  # the controls a recipe reads and fills (ui/recipe_panel.py)
        parts.update(latents=latents, strengths=strengths, mode=mode, patches=patches, sweep_latent=sweep_latent,
                     s_min=s_min, s_max=s_max, n_points=n_points)  # fmt: skip
