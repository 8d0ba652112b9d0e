"""Compose the tabs into one Blocks app around a shared image and label list."""

from __future__ import annotations

import functools

import gradio as gr
from PIL import Image

from engine.resident import Workbench
from engine.specs import ASSETS, ModelSpec
from engine.toyworld import captions, render
from ui import attribution_tab, steering_tab
from ui.common import AppContext, ImageInput

HELDOUT_SEED, HELDOUT_SIZE = 777_000, 96
INTRO = """# Concept Steering Workbench
Upload an image (or pick an example), give the labels to choose between, then see which sparse-autoencoder
concepts drive the prediction (**Attribution**) and what happens when you suppress, amplify or add them
(**Steering**). Model: **{model}** · SAE: {d_sae} latents at `{site}`."""


@functools.cache
def toy_heldout() -> tuple[list[Image.Image], list[render.Scene]]:
    scenes = render.sample_scenes(HELDOUT_SIZE, HELDOUT_SEED)
    return [render.render(s, seed)[0] for s, seed in scenes], [s for s, _ in scenes]


def toy_heldout_for(labels: list[str]) -> tuple[list[Image.Image], list[int | None] | None]:
    images, scenes = toy_heldout()
    return images, captions.truth_for_labels(labels, scenes)


def context_for(bench: Workbench) -> AppContext:
    is_toy = bench.model_spec == ModelSpec.toy()
    examples = sorted(str(p) for p in (ASSETS / "examples").glob("*.png")) if is_toy else []
    return AppContext(bench=bench, examples=examples, heldout=toy_heldout_for if is_toy else None)


def build_app(ctx: AppContext) -> gr.Blocks:
    bench = ctx.bench
    spec = bench.model_spec
    with gr.Blocks(title="Concept Steering Workbench") as app:
        gr.Markdown(INTRO.format(model=spec.display_name, d_sae=bench.d_sae, site=bench.site))
        with gr.Row():
            with gr.Column(scale=1):
                image = ImageInput(label="Image", type="filepath", sources=["upload", "clipboard"], height=260)
                if ctx.examples:
                    gr.Examples(ctx.examples, inputs=image, label="Toy-world examples")
            with gr.Column(scale=2):
                labels = gr.Textbox(label="Labels (comma-separated)", value=", ".join(spec.default_labels), lines=2)
                template = gr.Textbox(
                    label="Prompt template ({} is replaced by each label)", value=spec.prompt_template
                )
                selected_latent = gr.Textbox(label="Selected latent id (from Attribution, or type one)", max_lines=1)
        with gr.Tabs():
            with gr.Tab("Attribution"):
                attribution_tab.build(ctx, image, labels, template, selected_latent)
            with gr.Tab("Steering"):
                steering_tab.build(ctx, image, labels, template, selected_latent)
    return app
