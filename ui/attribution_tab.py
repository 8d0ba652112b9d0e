"""The Attribution tab: which SAE latents drive this prediction, where, and is the estimate faithful."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from engine import attribution
from ui.common import AppContext, ModelContext, load_image, overlay, parse_labels, parse_latent, save_png, user_errors

METRIC_CHOICES = [
    ("logit difference (target vs best other)", "logit_difference"),
    ("target probability", "probability"),
]


def predictions_frame(labels: list[str], logits_L) -> pd.DataFrame:
    probs = logits_L.softmax(-1).tolist()
    return pd.DataFrame(
        {
            "label": labels,
            "probability": [round(p, 4) for p in probs],
            "logit": [round(v, 4) for v in logits_L.tolist()],
        }
    )


def run_attribution(ctx: ModelContext, image, labels_text, template, target, metric, top_k):
    """Handler behind the `attribute` endpoint."""
    bench = ctx.bench
    picture = load_image(image)
    labels = parse_labels(labels_text)
    top_k = parse_latent_count(top_k)
    result = attribution.attribute(
        bench, picture, labels, target or None, metric or "logit_difference", template or None
    )
    latents = result.top(top_k)
    f_TS = result.state.f_TS
    activation_S = f_TS.sum(0)
    names = ctx.latent_names(latents, template or None)
    table = pd.DataFrame(
        {
            "latent": latents,
            "label": [names[i][0] for i in latents],
            "label_score": [names[i][1] for i in latents],
            "attribution": [round(float(result.scores_S[i]), 4) for i in latents],
            "activation": [round(float(activation_S[i]), 4) for i in latents],
        }
    )
    grid = bench.backend.grid
    gallery = [
        (
            save_png(overlay(picture, attribution.patch_map(f_TS[:, i], grid)), f"latent{i}_"),
            f"#{i} {names[i][0]}",
        )
        for i in latents[:6]
    ]
    faith = attribution.faithfulness(bench, result, k=top_k, template=template or None)
    faith_table = pd.DataFrame(
        {
            "latent": faith["latents"],
            "predicted_drop": [round(v, 4) for v in faith["predicted"]],
            "actual_drop": [round(v, 4) for v in faith["actual"]],
        }
    )
    label_source = (
        "ground-truth factor (score: AUROC)"
        if bench.latent_info is not None
        else "closest concepts of the vocabulary in the joint space (score: cosine)"
    )
    summary = (
        f"**Prediction:** {labels[int(result.logits_L.argmax())]} · **target:** {labels[result.target]} · "
        f"**{result.metric.replace('_', ' ')}:** {result.metric_value:.3f} · "
        f"**faithfulness (Spearman, predicted vs actual drop of the top {len(latents)}):** {faith['spearman']:.2f} · "
        f"**SAE explained variance on this image:** {explained_variance(result.state):.3f} · "
        f"latent labels: {label_source}"
    )
    selected = str(latents[0]) if latents else ""
    return predictions_frame(labels, result.logits_L), table, gallery, faith_table, summary, selected


def explained_variance(state) -> float:
    """1 - |error|^2 / |acts - mean|^2 over this image's tokens: how much of the site the SAE reconstructs
    (a low value warns that the SAE does not fit this model or this image)."""
    acts_TD = state.acts_TD.float()
    residual = float(state.error_TD.float().pow(2).sum())
    total = float((acts_TD - acts_TD.mean(0)).pow(2).sum()) or 1.0
    return 1.0 - residual / total


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
    bench = ctx.bench
    picture = load_image(image)
    latent = parse_latent(latent, bench)
    (state,) = bench.site_states([picture])
    f_T = state.f_TS[:, latent]
    map_HW = attribution.patch_map(f_T, bench.backend.grid)
    name = ctx.latent_names([latent], template or None)[latent][0]
    caption = f"latent {latent} ({name or 'no label'}): max over patches {float(map_HW.max()):.3f}"
    if bench.backend.n_prefix_tokens:
        caption += f", class token {float(f_T[0]):.3f}"
    return save_png(overlay(picture, map_HW), f"latent{latent}_"), caption


def build(
    app: AppContext,
    model: gr.Dropdown,
    image: gr.Image,
    labels: gr.Textbox,
    template: gr.Textbox,
    selected_latent: gr.Textbox,
) -> None:
    with gr.Row():
        target = gr.Textbox(label="Target label (blank: the predicted one)", scale=2)
        metric = gr.Radio(METRIC_CHOICES, value="logit_difference", label="Metric", scale=2)
        top_k = gr.Slider(1, 50, value=10, step=1, label="Top latents", scale=1)
    run = gr.Button("Attribute", variant="primary")
    summary = gr.Markdown()
    with gr.Row():
        predictions_plot = gr.BarPlot(x="label", y="probability", title="Prediction", y_lim=[0, 1], sort="-y")
        predictions = gr.Dataframe(label="Predictions", interactive=False)
    latents = gr.Dataframe(
        label="Top latents (click a row to select it for the heatmap and for Steering)", interactive=False
    )
    gallery = gr.Gallery(label="Where the top latents fire (activation per patch)", columns=6, height=220)
    with gr.Row():
        with gr.Column():
            heat = gr.Image(label="Where the selected latent fires", type="filepath", height=260)
            heat_caption = gr.Markdown()
        faith = gr.Dataframe(label="Faithfulness: predicted vs actual drop of the metric when each latent is removed")

    def attribute(image, labels_text, template_text, target_text, metric_value, k, model_name):
        ctx = app.model(model_name)
        return run_attribution(ctx, image, labels_text, template_text, target_text, metric_value, k)

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
        [predictions, latents, gallery, faith, summary, selected_latent],
        api_name="attribute",
    )
    event.success(lambda df: df, predictions, predictions_plot, api_name=False)
    latents.select(pick, latents, selected_latent, api_name=False)
    selected_latent.change(
        user_errors(heatmap), [image, selected_latent, template, model], [heat, heat_caption], api_name="heatmap"
    )
