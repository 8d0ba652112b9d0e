"""The recipe panel: export the current analysis as JSON and as a link, and import one (pasted, or from the page's
own address) to reproduce it. engine/recipe.py validates; this module only reads and fills the components."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import gradio as gr

from engine.errors import USER_ERRORS, ModelUnavailableError, UserInputError
from engine.recipe import LIST_FIELDS, Recipe
from engine.resident import image_key
from ui import readings
from ui.common import AppContext, load_image, parse_float_list, parse_int_list, parse_labels, user_errors


@dataclass
class Parts:
    """The components a recipe reads and fills, gathered from the layout and the tabs."""

    model: gr.Dropdown
    model_info: gr.Markdown
    image: gr.Image
    labels: gr.Textbox
    template: gr.Textbox
    tabs: gr.Tabs
    tab: gr.Textbox
    target: gr.Textbox
    metric: gr.Radio
    top_k: gr.Slider
    latents: gr.Textbox
    strengths: gr.Textbox
    mode: gr.Radio
    patches: gr.Textbox
    sweep_latent: gr.Number
    s_min: gr.Number
    s_max: gr.Number
    n_points: gr.Slider


def export_recipe(app: AppContext, model_name, image, labels_text, template, target, metric, top_k, latents_text,
                  strengths_text, mode, patches_text, s_min, s_max, n_points, tab) -> tuple[str, str]:  # fmt: skip
    """Handler behind `export_recipe`: (JSON, link query string) of the current state."""
    model_name = model_name or app.default
    chosen = app.choices.get(model_name)
    if chosen is None:
        raise ValueError(f"unknown model {model_name!r}; valid: {', '.join(app.choices)}")
    recipe = Recipe(
        tab=tab or "attribution",
        model=model_name,
        model_spec=chosen.model.display_name,
        sae_spec=chosen.sae.display_name,
        image_sha1=image_key(load_image(image)) if image else "",
        labels=tuple(parse_labels(labels_text)),
        template=template or "",
        target=target or "",
        metric=metric or "logit_difference",
        top_k=int(top_k or 10),
        latents=tuple(parse_int_list(latents_text, "latent ids")),
        strengths=tuple(parse_float_list(strengths_text, "strength")),
        mode=mode or "scale",
        patches=tuple(parse_int_list(patches_text, "patch indices")),
        sweep=tuple(parse_float_list(f"{s_min},{s_max},{n_points}", "sweep")),
    )
    return recipe.to_json(), "?" + recipe.to_query()


def resolve_model(app: AppContext, recipe: Recipe) -> str:
    """The menu name of the recipe's model on this server: its own name, or another entry with the same model
    and SAE; else a message that says which model the recipe needs."""
    if not recipe.model:
        return app.default
    chosen = app.choices.get(recipe.model)
    if chosen is not None and (not recipe.model_spec or chosen.model.display_name == recipe.model_spec):
        return recipe.model
    for name, other in app.choices.items():
        if other.model.display_name == recipe.model_spec and other.sae.display_name == recipe.sae_spec:
            return name
    needs = f"{recipe.model!r}" + (f" (model {recipe.model_spec}, SAE {recipe.sae_spec})" if recipe.model_spec else "")
    raise ModelUnavailableError(
        f"this recipe needs the model {needs}, which this server does not offer; offered: {', '.join(app.choices)}. "
        "Start the app with that model (python app.py --model ... --sae ...) to reproduce it"
    )


def apply_recipe(app: AppContext, recipe: Recipe, image) -> tuple:
    """The components' new values, in the order of :func:`outputs`, and a note on what was applied."""
    from ui.layout import describe

    name = resolve_model(app, recipe)
    try:
        workbench = app.model(name).workbench
    except USER_ERRORS as error:
        raise ModelUnavailableError(
            f"this recipe needs the model {name!r}, which cannot be used here: {error}"
        ) from None
    chosen = app.choices[name]
    note = [f"Recipe applied: model **{readings.escaped(name)}**, tab **{recipe.tab}**."]
    if recipe.image_sha1:
        current = image_key(load_image(image)) if image else None
        if current is None:
            note.append(f"⚠️ The recipe was made on an image with hash `{recipe.image_sha1[:12]}…`: upload that image.")
        elif current != recipe.image_sha1:
            note.append(
                f"⚠️ The current image is not the recipe's (hash `{current[:12]}…`, the recipe's "
                f"`{recipe.image_sha1[:12]}…`): results will differ until you upload the recipe's image."
            )
        else:
            note.append("The current image is the recipe's image.")
    low, high, n = recipe.sweep
    return (
        name,
        describe(chosen, workbench),
        ", ".join(recipe.labels) if recipe.labels else gr.update(),
        recipe.template or gr.update(),
        recipe.target,
        recipe.metric,
        recipe.top_k,
        ", ".join(map(str, recipe.latents)),
        ", ".join(f"{s:g}" for s in recipe.strengths) if recipe.strengths else "1",
        recipe.mode,
        ", ".join(map(str, recipe.patches)),
        recipe.latents[0] if recipe.latents else None,
        low,
        high,
        int(n),
        gr.Tabs(selected=recipe.tab),
        recipe.tab,
        "\n\n".join(note),
    )


def outputs(parts: Parts, note: gr.Markdown) -> list:
    p = parts
    return [p.model, p.model_info, p.labels, p.template, p.target, p.metric, p.top_k, p.latents, p.strengths, p.mode,
            p.patches, p.sweep_latent, p.s_min, p.s_max, p.n_points, p.tabs, p.tab, note]  # fmt: skip


def build(app: AppContext, parts: Parts, loaded: gr.State, blocks: gr.Blocks) -> None:
    with gr.Accordion("Recipe: save, share or reproduce this analysis", open=False):
        gr.Markdown(
            "A recipe records the model, the image's fingerprint (not the image), the labels, template, target, "
            "metric, latents, strengths, mode, patches, sweep and tab. Paste one (or open its link) to set them all."
        )
        with gr.Row():
            export = gr.Button("Export recipe", scale=1)
            recipe_json = gr.Code(label="Recipe (JSON)", language="json", scale=3)
            recipe_link = gr.Textbox(label="Link (append to this page's address)", scale=2, max_lines=3)
        with gr.Row():
            pasted = gr.Textbox(label="Paste a recipe (JSON or link)", lines=3, scale=4)
            apply = gr.Button("Apply recipe", scale=1)
        note = gr.Markdown()
    p = parts
    state_inputs = [p.model, p.image, p.labels, p.template, p.target, p.metric, p.top_k, p.latents, p.strengths,
                    p.mode, p.patches, p.s_min, p.s_max, p.n_points, p.tab]  # fmt: skip

    def export_current(*values):
        return export_recipe(app, *values)

    export.click(
        user_errors(export_current, gpu=False),
        state_inputs,
        [recipe_json, recipe_link],
        api_name="export_recipe",
    )

    def import_recipe(text, image):
        return apply_recipe(app, Recipe.parse(text), image)

    targets = outputs(parts, note)
    applied = apply.click(user_errors(import_recipe, gpu=False), [pasted, p.image], targets, api_name="import_recipe")
    applied.success(lambda name: name, p.model, loaded, api_name=False)

    def from_address(image, request: gr.Request):
        """A link's recipe, applied when the page opens; no change when the address carries none."""
        query = {k: v for k, v in (request.query_params.items() if request is not None else []) if k[:2] != "__"}
        if not any(key in query for key in ("model", "labels", "latents", "tab", *LIST_FIELDS)):
            return tuple(gr.update() for _ in targets)
        try:
            return apply_recipe(app, Recipe.from_query(urlencode(query)), image)
        except (UserInputError, ModelUnavailableError, ValueError) as error:
            return (
                *(gr.update() for _ in targets[:-1]),
                f"⚠️ The link's recipe was not applied: {readings.escaped(error)}",
            )

    opened = blocks.load(from_address, p.image, targets, api_name=False)
    opened.success(lambda name: name, p.model, loaded, api_name=False)
