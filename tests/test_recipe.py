"""Recipes through the served app: exported, imported into a fresh state, they reproduce the same results; one
for a model the server does not offer says which model it needs; bad recipes get clear messages."""

from __future__ import annotations

import html
import json

import pytest
from gradio_client import Client, handle_file

from engine.recipe import Recipe
from engine.registry import TOY
from engine.specs import ASSETS

from .conftest import SHAPES
from .served import free_port

LABELS = ", ".join(SHAPES)
EXAMPLES = sorted(str(p) for p in (ASSETS / "examples").glob("*.png"))


@pytest.fixture(scope="module")
def client(workbench):
    from app import create_app, serve

    app = create_app("cpu", {"toy": TOY})
    port = free_port()
    serve(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    app.close()


STATE = dict(
    model="toy", labels="cross, circle, triangle, square", template="a picture of a {}", target="circle",
    metric="probability", top_k=4, latents="12, 40", strengths="0, 2.5", mode="scale", patches="3, 14",
    s_min=-2.0, s_max=2.0, n_points=5, tab="steering",
)  # fmt: skip


def export(client, image, state=STATE):
    s = state
    return client.predict(
        s["model"], image, s["labels"], s["template"], s["target"], s["metric"], s["top_k"], s["latents"],
        s["strengths"], s["mode"], s["patches"], s["s_min"], s["s_max"], s["n_points"], s["tab"],
        api_name="/export_recipe",
    )  # fmt: skip


def results(client, image, model, labels, template, target, metric, top_k, latents, strengths, mode, patches,
            sweep_latent, s_min, s_max, n_points):  # fmt: skip
    attribution = client.predict(image, labels, template, target, metric, top_k, model, api_name="/attribute")
    steered = client.predict(image, labels, template, latents, strengths, mode, patches, model, api_name="/steer")
    swept = client.predict(image, labels, template, sweep_latent, s_min, s_max, n_points, mode, patches,
                           "logit_difference", model, api_name="/sweep")  # fmt: skip
    return attribution[0], attribution[1], attribution[4], steered[0], steered[2], swept[0], swept[2]


@pytest.mark.parametrize("form", ["json", "link"])
def test_an_exported_recipe_reproduces_the_same_results(client, form):
    image = handle_file(EXAMPLES[2])
    recipe_json, link = export(client, image)
    assert link.startswith("?") and json.loads(recipe_json)["latents"] == [12, 40]
    s = STATE
    original = results(client, image, s["model"], s["labels"], s["template"], s["target"], s["metric"], s["top_k"],
                       s["latents"], s["strengths"], s["mode"], s["patches"], 12, s["s_min"], s["s_max"],
                       s["n_points"])  # fmt: skip
    pasted = recipe_json if form == "json" else f"http://somewhere.example/{link}"
    model, _, labels, template, target, metric, top_k, latents, strengths, mode, patches, sweep_latent, low, high, n, \
        tab, note = client.predict(pasted, image, api_name="/import_recipe")  # fmt: skip
    assert (model, tab, metric, mode, top_k) == ("toy", "steering", "probability", "scale", 4)
    assert "current image is the recipe's image" in note
    again = results(client, image, model, labels, template, target, metric, top_k, latents, strengths, mode, patches,
                    sweep_latent, low, high, n)  # fmt: skip
    assert again == original


def test_a_recipe_on_another_image_says_so(client):
    recipe_json, _ = export(client, handle_file(EXAMPLES[2]))
    *_, note = client.predict(recipe_json, handle_file(EXAMPLES[3]), api_name="/import_recipe")
    assert "not the recipe's" in note


def test_a_recipe_for_a_model_not_offered_names_it(client):
    recipe = Recipe(model="prisma-vit-b32", model_spec="open_clip:hf-hub:laion/CLIP", sae_spec="hf:Prisma/sae",
                    labels=("cat", "dog"))  # fmt: skip
    with pytest.raises(Exception) as raised:
        client.predict(recipe.to_json(), None, api_name="/import_recipe")
    message = html.unescape(str(raised.value))
    assert "needs the model 'prisma-vit-b32' (model open_clip:hf-hub:laion/CLIP, SAE hf:Prisma/sae)" in message
    assert "offered: toy" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"version": 1, "script": "<b>x</b>"}', "unknown recipe field"),
        ('{"version": 2}', "version 2 is not supported"),
        ('{"strengths": [1e999]}', "wrong kind"),
        ('{"labels": ["a", "a"]}', "must be distinct"),
        ('{"mode": "delete"}', "unknown mode 'delete'; valid: scale, add"),
        ("?model=toy&template=no+braces", "must contain"),
        ("", "paste a recipe"),
    ],
)
def test_a_bad_recipe_gets_a_clear_message(client, text, message):
    with pytest.raises(Exception) as raised:
        client.predict(text, None, api_name="/import_recipe")
    assert message in html.unescape(str(raised.value)) and "<b>" not in str(raised.value)
