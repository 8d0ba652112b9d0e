"""Compose the tabs into one Blocks app around a shared image and label list."""

from __future__ import annotations

import functools

import gradio as gr
from PIL import Image

from engine.registry import PHOTOS_DIR, TOY_EXAMPLES_DIR, Preset, default_labels, label_set, label_set_names
from engine.resident import Workbench
from engine.specs import ModelSpec
from engine.toyworld import captions, render
from ui import attribution_tab, steering_tab
from ui.common import AppContext, ImageInput, user_errors

HELDOUT_SEED, HELDOUT_SIZE = 777_000, 96
INTRO = """# Concept Steering Workbench
Upload an image (or pick an example), give the labels to choose between, then see which sparse-autoencoder
concepts drive the prediction (**Attribution**) and what happens when you suppress, amplify or add them
(**Steering**)."""


@functools.cache
def toy_heldout() -> tuple[list[Image.Image], list[render.Scene]]:
    scenes = render.sample_scenes(HELDOUT_SIZE, HELDOUT_SEED)
    return [render.render(s, seed)[0] for s, seed in scenes], [s for s, _ in scenes]


def toy_heldout_for(labels: list[str]) -> tuple[list[Image.Image], list[int | None] | None]:
    images, scenes = toy_heldout()
    return images, captions.truth_for_labels(labels, scenes)


@functools.cache
def photos() -> tuple[Image.Image, ...]:
    return tuple(Image.open(p).convert("RGB") for p in sorted(PHOTOS_DIR.glob("*.jpg")))


def photos_heldout(labels: list[str]) -> tuple[list[Image.Image], None]:
    """The shipped photographs: a small held-out batch without ground truth (only prediction changes count)."""
    return list(photos()), None


def heldout_for(chosen: Preset):
    return toy_heldout_for if chosen.model == ModelSpec.toy() else photos_heldout


def example_files() -> dict[str, list[str]]:
    return {
        "Toy-world examples": sorted(str(p) for p in TOY_EXAMPLES_DIR.glob("*.png")),
        "Photographs (public domain / CC0, for real models)": sorted(str(p) for p in PHOTOS_DIR.glob("*.jpg")),
    }


def labels_text(chosen: Preset) -> str:
    return ", ".join(default_labels(chosen))


def describe(chosen: Preset, bench: Workbench) -> str:
    sources = " · ".join(f"[source]({url})" for url in chosen.sources)
    return (
        f"**{chosen.name}**: {chosen.description}. Model **{chosen.model.display_name}** · SAE "
        f"{chosen.sae.display_name}: {bench.d_sae} latents at `{bench.site}` · {bench.device}, {bench.dtype}"
        + (f" · {sources}" if sources else "")
    )


def build_app(ctx: AppContext) -> gr.Blocks:
    first = ctx.choices[ctx.default]
    with gr.Blocks(title="Concept Steering Workbench") as app:
        gr.Markdown(INTRO)
        with gr.Row():
            model = gr.Dropdown(list(ctx.choices), value=ctx.default, label="Model and SAE", scale=1)
            model_info = gr.Markdown(describe(first, ctx.model(ctx.default).bench))
        with gr.Row():
            with gr.Column(scale=1):
                image = ImageInput(label="Image", type="filepath", sources=["upload", "clipboard"], height=260)
                for title, files in ctx.examples.items():
                    if files:
                        gr.Examples(files, inputs=image, label=title)
            with gr.Column(scale=2):
                labels = gr.Textbox(label="Labels (comma-separated)", value=labels_text(first), lines=2, max_lines=6)
                label_set_choice = gr.Dropdown(
                    ["(unchanged)", *label_set_names()], value="(unchanged)", label="Fill labels from a shipped set"
                )
                template = gr.Textbox(
                    label="Prompt template ({} is replaced by each label)", value=first.model.prompt_template
                )
                selected_latent = gr.Textbox(label="Selected latent id (from Attribution, or type one)", max_lines=1)
        with gr.Tabs():
            with gr.Tab("Attribution"):
                attribution_tab.build(ctx, model, image, labels, template, selected_latent)
            with gr.Tab("Steering"):
                steering_tab.build(ctx, model, image, labels, template, selected_latent)

        def switch(name):
            chosen = ctx.choices.get(name)
            if chosen is None:
                raise ValueError(f"unknown model {name!r}; valid: {', '.join(ctx.choices)}")
            bench = ctx.model(name).bench
            return describe(chosen, bench), labels_text(chosen), chosen.model.prompt_template, ""

        def fill_labels(name, current):
            return current if name in (None, "", "(unchanged)") else ", ".join(label_set(name))

        model.change(
            user_errors(switch), model, [model_info, labels, template, selected_latent], api_name="select_model"
        )
        label_set_choice.change(fill_labels, [label_set_choice, labels], labels, api_name=False)
    return app
