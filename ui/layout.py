"""Compose the tabs into one Blocks app around a shared image and label list."""

from __future__ import annotations

import gradio as gr

from engine import heldout
from engine.errors import USER_ERRORS, ModelUnavailableError
from engine.heldout import Heldout
from engine.registry import TOY_EXAMPLES_DIR, Preset, default_labels, label_set, label_set_names
from engine.resident import Workbench
from engine.specs import PHOTOS_DIR, ModelSpec
from ui import attribution_tab, diff_tab, explain_tab, glossary, latents_tab, recipe_panel, share, steering_tab
from ui.common import (
    AppContext,
    ImageInput,
    image_warnings,
    load_image,
    user_errors,
    warning_markdown,
)

INTRO = """# Concept Steering Workbench
Upload an image (or pick an example), give the labels to choose between, then see which sparse-autoencoder
concepts drive the prediction (**Attribution**) and what happens when you suppress, amplify or add them
(**Steering**), what a concept is in words, said by a vision-language model (**Explain**), or what changed between
two checkpoints of a model (**Diff**); every latent through the images that activate it most (**Latents**)."""


APP_CSS = """
#input-image img { min-width: 240px; min-height: 240px; object-fit: contain; image-rendering: pixelated; }
"""
"""Passed to ``launch(css=...)`` (Gradio 6): a small toy image (48 px) is shown at a readable size, its pixels sharp."""


DELETE_CACHE = (600, 3600)
"""Every 10 minutes Gradio deletes the files it cached for this app (uploads, output images, reports) that are
older than an hour: a public server's disk stays bounded."""


def heldout_for(chosen: Preset) -> Heldout:
    return heldout.heldout_for(chosen.model)


TOY_EXAMPLES = "Toy-world examples"
PHOTO_EXAMPLES = "Photographs (public domain / CC0, for real models)"


def example_files() -> dict[str, list[str]]:
    return {
        TOY_EXAMPLES: sorted(str(p) for p in TOY_EXAMPLES_DIR.glob("*.png")),
        PHOTO_EXAMPLES: sorted(str(p) for p in PHOTOS_DIR.glob("*.jpg")),
    }


def examples_fit(title: str, chosen: Preset) -> bool:
    """Whether an example set is offered with this model: the toy scenes with the toy only, the photographs with
    real models only (the toy SAE explains little of a photograph: its story about one would mislead)."""
    is_toy = chosen.model == ModelSpec.toy()
    return {TOY_EXAMPLES: is_toy, PHOTO_EXAMPLES: not is_toy}.get(title, True)


def labels_text(chosen: Preset) -> str:
    return ", ".join(default_labels(chosen))


def describe(chosen: Preset, workbench: Workbench) -> str:
    sources = " · ".join(f"[source]({url})" for url in chosen.sources)
    return (
        f"**{chosen.name}**: {chosen.description}. Model **{chosen.model.display_name}** · SAE "
        f"{chosen.sae.display_name}: {workbench.d_sae} latents at `{workbench.site}` · {workbench.device}, {workbench.dtype}"
        + (f" · {sources}" if sources else "")
    )


def build_app(ctx: AppContext) -> gr.Blocks:
    first = ctx.choices[ctx.default]
    share.serve_images_as_they_are()
    with gr.Blocks(title="Concept Steering Workbench", delete_cache=DELETE_CACHE) as app:
        gr.Markdown(INTRO)
        with gr.Accordion("Glossary: the technical terms in plain words", open=False):
            gr.Markdown(glossary.markdown())
        loaded = gr.State(ctx.default)  # the model that last loaded: the menu returns to it when another fails
        with gr.Row():
            model = gr.Dropdown(
                list(ctx.choices),
                value=ctx.default,
                label="Model and SAE",
                scale=1,
                info=f"SAE: {glossary.explain('SAE')}.",
            )
            model_info = gr.Markdown(describe(first, ctx.model(ctx.default).workbench))
        with gr.Row():
            with gr.Column(scale=1):
                image = ImageInput(
                    label="Image", type="filepath", sources=["upload", "clipboard"], height=260, elem_id="input-image"
                )
                image_warning = gr.Markdown(elem_classes="warning")
                example_sets = []
                for title, files in ctx.examples.items():
                    if files:
                        with gr.Column(visible=examples_fit(title, first)) as column:
                            gr.Examples(files, inputs=image, label=title)
                        example_sets.append((title, column))
            with gr.Column(scale=2):
                labels = gr.Textbox(label="Labels (comma-separated)", value=labels_text(first), lines=2, max_lines=6)
                label_set_choice = gr.Dropdown(
                    ["(unchanged)", *label_set_names()], value="(unchanged)", label="Fill labels from a shipped set"
                )
                template = gr.Textbox(
                    label="Prompt template ({} is replaced by each label)", value=first.model.prompt_template
                )
                selected_latent = gr.Textbox(
                    label="Selected latent id (from Attribution, or type one)",
                    max_lines=1,
                    info=f"A latent is {glossary.explain('latent')}.",
                )
        tab = gr.Textbox("attribution", visible=False)  # the open tab, for recipes (a client reads and sets it)
        parts: dict = {}
        with gr.Tabs() as tabs:
            with gr.Tab("Attribution", id="attribution") as attribution_page:
                refresh_attribution = attribution_tab.build(ctx, model, image, labels, template, selected_latent, parts)
            with gr.Tab("Steering", id="steering") as steering_page:
                steering_tab.build(ctx, model, image, labels, template, selected_latent, parts)
            with gr.Tab("Explain", id="explain") as explain_page:
                explain_context = ctx.explain or explain_tab.ExplainContext({}, lambda chosen: None)
                explain_tab.build(
                    ctx, explain_context, model, image, labels, template, selected_latent, refresh_attribution
                )
            with gr.Tab("Diff", id="diff") as diff_page:
                diff_tab.build(ctx, image, labels, template)
            with gr.Tab("Latents", id="latents"):  # not a recipe's tab: a recipe stays on the tab it was made on
                latents_tab.build(ctx, model, template, selected_latent)
        for page, name in ((attribution_page, "attribution"), (steering_page, "steering"), (explain_page, "explain"),
                           (diff_page, "diff")):  # fmt: skip
            page.select(lambda name=name: name, None, tab, api_name=False)
        recipe_panel.build(
            ctx,
            recipe_panel.Parts(
                model=model,
                model_info=model_info,
                image=image,
                labels=labels,
                template=template,
                tabs=tabs,
                tab=tab,
                **parts,
            ),  # fmt: skip
            loaded,
            app,
        )

        def switch(name, current):
            chosen = ctx.choices.get(name)
            if chosen is None:
                raise ValueError(f"unknown model {name!r}; valid: {', '.join(ctx.choices)}")
            try:
                workbench = ctx.model(name).workbench
            except USER_ERRORS as error:
                message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
                raise ModelUnavailableError(
                    f"the model {name!r} cannot be used here, so the app stays on {current!r}: {message}"
                ) from error
            visible = [gr.Column(visible=examples_fit(title, chosen)) for title, _ in example_sets]
            return describe(chosen, workbench), labels_text(chosen), chosen.model.prompt_template, "", *visible, name

        switch_outputs = [model_info, labels, template, selected_latent, *(column for _, column in example_sets)]

        def stay(current):
            """After a failed switch: the menu back on the model that works, every other box as it was (an update
            that changes nothing also lifts the error marks from them)."""
            return current, *[gr.update() for _ in switch_outputs]

        def check_image(image_value, name):
            if image_value is None or image_value == "":
                return ""
            return warning_markdown(image_warnings(ctx.model(name).workbench, load_image(image_value)))

        def fill_labels(name, current):
            return current if name in (None, "", "(unchanged)") else ", ".join(label_set(name))

        # `input`, not `change`: the menu set back by `stay` must not start another switch.
        switched = model.input(
            user_errors(switch, gpu=False),  # a look-up: every model is loaded outside GPU calls
            [model, loaded],
            [*switch_outputs, loaded],
            api_name="select_model",
        )
        switched.failure(stay, loaded, [model, *switch_outputs], api_name=False)
        switched.success(user_errors(check_image), [image, model], image_warning, api_name=False)
        image.change(user_errors(check_image), [image, model], image_warning, api_name="check_image")
        label_set_choice.change(fill_labels, [label_set_choice, labels], labels, api_name="fill_labels")
    return app
