"""The Attribution tab: which SAE latents drive this prediction, where, and is the estimate faithful."""

from __future__ import annotations

import gradio as gr
import pandas as pd
from PIL import Image

from engine import attribution
from ui import glossary, readings, share
from ui.common import (
    AppContext,
    ModelContext,
    clear_on_failure,
    heatmap_files,
    load_image,
    overlay,
    parse_labels,
    parse_latent,
    save_drawing,
    user_errors,
    warning_markdown,
)

METRIC_CHOICES = [
    ("logit difference (target vs best other)", "logit_difference"),
    ("target probability", "probability"),
]


def predictions_frame(labels: list[str], logits_L) -> pd.DataFrame:
    """Labels by decreasing probability, like the chart beside the table."""
    probabilities, logits = logits_L.softmax(-1).tolist(), logits_L.tolist()
    order = sorted(range(len(labels)), key=lambda i: -probabilities[i])  # stable: ties keep the labels' order
    return pd.DataFrame(
        {
            "label": [labels[i] for i in order],
            "probability": [probabilities[i] for i in order],
            "logit": [logits[i] for i in order],
        }
    )


def run_attribution(ctx: ModelContext, image, labels_text, template, target, metric, top_k, explain_settings=None):
    """Handler behind the `attribute` endpoint (``explain_settings``: those of the session's last Explain batch, whose
    cached explanations the table shows)."""
    workbench = ctx.workbench
    picture = load_image(image)
    labels = parse_labels(labels_text)
    top_k = parse_latent_count(top_k)
    template = template or None
    result = attribution.attribute(workbench, picture, labels, target or None, metric or "logit_difference", template)
    latents = result.top(top_k)
    activation_S = result.state.activation_S
    names = ctx.latent_names(latents, template)
    warnings = attribution.warnings_for(workbench, result.state)
    table = pd.DataFrame(
        {
            "latent": latents,
            "label": [names[i][0] for i in latents],
            "label_score": [names[i][1] for i in latents],
            "attribution": [float(result.scores_S[i]) for i in latents],
            "activation": [float(activation_S[i]) for i in latents],
        }
    )
    explained = ctx.explanations(latents, explain_settings)
    if explained:  # the Explain tab's words for each latent, where it has explained them
        table["explanation"] = [explained.get(i, "") for i in latents]
    grid = workbench.backend.grid
    f_TK = result.state.columns(latents[:6])
    maps = [(attribution.patch_map(f_TK[:, k], grid), f"latent{i}_") for k, i in enumerate(latents[:6])]
    captions = [
        f"#{i} {names[i][0]}" + (" (class token only: blank map)" if float(map_HW.abs().max()) == 0 else "")
        for i, (map_HW, _) in zip(latents, maps, strict=False)
    ]
    faith = attribution.faithfulness(workbench, result, k=top_k, template=template)
    gallery = list(zip(heatmap_files(picture, maps), captions, strict=True))
    faith_table = pd.DataFrame(
        {"latent": faith["latents"], "predicted_drop": faith["predicted"], "actual_drop": faith["actual"]}
    )
    label_source = (
        "ground-truth factor (score: AUROC)"
        if workbench.latent_info is not None
        else "closest concepts of the vocabulary in the joint space (score: cosine)"
    )
    summary = (
        f"**Prediction:** {labels[int(result.logits_L.argmax())]} · **target:** {labels[result.target]} · "
        f"**{result.metric.replace('_', ' ')}:** {readings.number(result.metric_value)} · "
        f"**faithfulness (Spearman, predicted vs actual drop of the top {len(latents)}):** "
        f"{readings.number(faith['spearman'])} · "
        f"**SAE explained variance on this image:** {readings.number(result.state.explained_variance)} · "
        f"latent labels: {label_source}"
    )
    selected = str(latents[0]) if latents else ""
    reading = attribution_reading(ctx, picture, labels, template, result, faith, names)
    return (
        readings.display_table(predictions_frame(labels, result.logits_L)),
        readings.display_table(table),
        gallery,
        readings.display_table(faith_table),
        summary,
        selected,
        warning_markdown(warnings),
        reading,
    )


def export_attribution(ctx: ModelContext, image, labels_text, template, target, metric, top_k) -> str:
    """Handler behind `export_attribution`: the analysis as one self-contained HTML file (ui/share.py)."""
    predictions, latents, gallery, faith, summary, _, warning, reading = run_attribution(
        ctx, image, labels_text, template, target, metric, top_k
    )
    picture = load_image(image)

    def table(styled, title: str) -> dict:
        frame = styled.frame
        return {"title": title, "headers": list(frame.columns), "rows": frame.values.tolist()}

    page = share.analysis_html(
        f"Attribution on {ctx.workbench.model_spec.display_name}",
        f"{reading}\n\n{summary}",
        [line for line in warning.split("\n\n") if line.strip()],
        [(picture.resize((192, 192), Image.NEAREST) if min(picture.size) < 192 else picture, "the image")],
        table(predictions, "Prediction"),
        table(latents, "Top latents"),
        [(path, caption) for path, caption in gallery],
        table(faith, "Faithfulness: predicted vs actual drop when each latent is removed"),
    )
    return share.write_file(page, "attribution_")


def attribution_reading(ctx: ModelContext, picture, labels, template, result, faith, names) -> str:
    """The plain-language reading: the answer, and what removing its strongest support actually does."""
    best = readings.strongest(faith["latents"], faith["actual"])
    latent = drop = answer_after = probabilities_after = None
    if best is not None:
        latent, drop = faith["latents"][best], faith["actual"][best]
        probabilities_after = faith["probabilities_after"][best]
        answer_after = max(range(len(labels)), key=lambda i: probabilities_after[i])
    return readings.attribution_reading(
        labels,
        result.logits_L.softmax(-1).tolist(),
        result.target,
        result.metric,
        result.metric_value,
        latent,
        names[latent][0] if latent is not None else None,
        drop,
        answer_after,
        probabilities_after,
        faith["spearman"],
        len(faith["latents"]),
    )


def parse_latent_count(value) -> int:
    try:
        k = int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"top k must be a whole number 1 .. 50; got {value!r}") from None
    if not 1 <= k <= 50:
        raise ValueError(f"top k must be within 1 .. 50; got {k}")
    return k


def latent_heatmap(ctx: ModelContext, image, latent, template=None) -> tuple[str, str]:
    """Handler behind `heatmap`: where one latent fires on the image."""
    workbench = ctx.workbench
    picture = load_image(image)
    latent = parse_latent(latent, workbench)
    (state,) = workbench.site_states([picture])
    f_T = state.columns([latent])[:, 0]
    map_HW = attribution.patch_map(f_T, workbench.backend.grid)
    name = ctx.latent_names([latent], template or None)[latent][0]
    class_token = float(f_T[0]) if workbench.backend.n_prefix_tokens else None
    caption = readings.heatmap_caption(latent, name, float(map_HW.max()), class_token)
    return save_drawing(overlay(picture, map_HW), f"latent{latent}_", picture), caption


def build(
    app: AppContext,
    model: gr.Dropdown,
    image: gr.Image,
    labels: gr.Textbox,
    template: gr.Textbox,
    selected_latent: gr.Textbox,
    parts: dict | None = None,
):
    """The tab's components and events; returns ``refresh(event, settings_state)`` for the Explain tab. ``parts``
    receives the controls a recipe reads and fills (ui/recipe_panel.py)."""
    with gr.Row():
        target = gr.Textbox(
            label="Target label (blank: the predicted one)",
            scale=2,
            info="The label whose score is explained; leave blank to explain the model's own answer.",
        )
        metric = gr.Radio(
            METRIC_CHOICES,
            value="logit_difference",
            label="Metric",
            scale=2,
            info=f"Logit difference: {glossary.explain('logit difference')}.",
        )
        top_k = gr.Slider(
            1, 50, value=10, step=1, label="Top latents", scale=1, info="How many concepts to list and check."
        )
    run = gr.Button("Attribute", variant="primary")
    warning = gr.Markdown(elem_classes="warning")
    reading = gr.Markdown()
    summary = gr.Markdown()
    with gr.Row():
        predictions_plot = gr.BarPlot(x="label", y="probability", title="Prediction", y_lim=[0, 1], sort="-y")
        predictions = gr.Dataframe(label="Predictions (most likely first)", interactive=False)
    latents = gr.Dataframe(
        label="Top latents (click a row to select it for the heatmap, for Steering, and for its card in Latents)",
        interactive=False,
    )
    gr.Markdown(
        f"*latent*: {glossary.explain('latent')}. *label_score*: {glossary.explain('label_score')}. "
        f"*attribution*: {glossary.explain('attribution')}. *activation*: how strongly it fires, summed over patches."
    )
    gallery = gr.Gallery(label="Where the top latents fire (activation per patch)", columns=6, height=260)
    with gr.Row():
        with gr.Column():
            heat = gr.Image(label="Where the selected latent fires (grid: the patches)", type="filepath", height=300)
            heat_caption = gr.Markdown()
        with gr.Column():
            faith = gr.Dataframe(
                label="Faithfulness: predicted vs actual drop of the metric when each latent is removed"
            )
            gr.Markdown(
                "*predicted_drop*: the attribution's estimate; *actual_drop*: what removing the concept really does "
                f"(positive: the score falls). *Spearman*: {glossary.explain('Spearman')}."
            )
    outputs = [predictions, latents, gallery, faith, summary, selected_latent, warning, reading]
    with gr.Row():
        export = gr.Button("Export this analysis (HTML, for people who do not run the app)", scale=1)
        exported = gr.File(label="Shareable report", scale=2)

    def attribute(image, labels_text, template_text, target_text, metric_value, k, model_name):
        ctx = app.model(model_name)
        return run_attribution(ctx, image, labels_text, template_text, target_text, metric_value, k)

    def export_report(image, labels_text, template_text, target_text, metric_value, k, model_name):
        ctx = app.model(model_name)
        return export_attribution(ctx, image, labels_text, template_text, target_text, metric_value, k)

    def heatmap(image, latent, template_text, model_name):
        if not str(latent or "").strip() or image is None:
            return None, ""
        return latent_heatmap(app.model(model_name), image, latent, template_text)

    def pick(table, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return str(int(table.iloc[row]["latent"]))

    event = run.click(
        user_errors(attribute),
        [image, labels, template, target, metric, top_k, model],
        outputs,
        api_name="attribute",
    )
    event.success(lambda df: df, predictions, predictions_plot, api_name=False)
    # The selected latent is the user's choice: kept when a request fails.
    clear_on_failure(event, [predictions_plot, *(o for o in outputs if o is not selected_latent)])
    exporting = export.click(
        user_errors(export_report),
        [image, labels, template, target, metric, top_k, model],
        exported,
        api_name="export_attribution",
    )
    clear_on_failure(exporting, [exported])
    latents.select(pick, latents, selected_latent, api_name=False)

    def refresh(after, explain_settings: gr.State) -> None:
        """Run Attribution again when ``after`` succeeds (the Explain tab's batch): the table then shows the new
        explanations, read from the cache under the settings in ``explain_settings``."""

        def again(image, labels_text, template_text, target_text, metric_value, k, model_name, settings):
            ctx = app.model(model_name)
            return run_attribution(ctx, image, labels_text, template_text, target_text, metric_value, k, settings)

        inputs = [image, labels, template, target, metric, top_k, model, explain_settings]
        after.success(user_errors(again), inputs, outputs, api_name=False)

    selected_latent.change(
        user_errors(heatmap), [image, selected_latent, template, model], [heat, heat_caption], api_name="heatmap"
    )
    if parts is not None:
        parts.update(target=target, metric=metric, top_k=top_k)
    return refresh
