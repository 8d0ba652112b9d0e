"""The Explain tab's endpoints served on 127.0.0.1 and driven through gradio_client: the toy LLaVA, and a tiny
random-weight LLaVA (the real family's classes, processor and chat template) with a random SAE, side by side."""

import json

import pytest
from gradio_client import Client, handle_file

from engine.registry import TOY, TOY_EXPLAIN, ExplainPreset
from engine.sources import AllowedDirs
from engine.specs import TOY_SAE_DIR, TOY_VLM_DIR, SAESpec, VLMSpec
from engine.toyworld import render
from tests.served import free_port
from tests.vlm_fixtures import BUILDERS, tower_sae

from .conftest import SHAPES

TINY = "tiny llava (random weights)"
pytestmark = pytest.mark.skipif(not TOY_VLM_DIR.is_dir(), reason="assets/toy_vlm is not built")
LABELS = json.loads((TOY_SAE_DIR / "latent_info.json").read_text())["labels"]
SCORES = json.loads((TOY_SAE_DIR / "latent_info.json").read_text())["scores"]
BOTTOM_RIGHT = next(
    i for i, (label, s) in enumerate(zip(LABELS, SCORES)) if label == "position=bottom right" and s >= 0.9
)
DEFAULTS = ("add", "32", "", "", "white", "")  # style, coefficient, question, prefix, neutral image, seed


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from app import create_app

    root = tmp_path_factory.mktemp("explain_app")
    tower_sae(root / "sae", seed=2)
    tiny = {
        f"tiny {family} (random weights)": ExplainPreset(
            f"tiny {family} (random weights)", VLMSpec(str(build(root / family))), SAESpec(str(root / "sae")), "random"
        )
        for family, build in BUILDERS.items()
    }
    app = create_app(
        "cpu", {"toy": TOY}, allowed=AllowedDirs.default([root]), explain_pairs={TOY_EXPLAIN.name: TOY_EXPLAIN, **tiny},
        explain_cache=str(root / "cache"),
    )  # fmt: skip
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False), root
    app.close()


@pytest.fixture(scope="module")
def client(served):
    return served[0]


@pytest.fixture(scope="module")
def red_image(tmp_path_factory):
    image, _ = render.render(render.Scene("circle", "red", "plain", "large", "top left", "absent"), seed=9)
    path = tmp_path_factory.mktemp("img") / "red.png"
    image.save(path)
    return str(path)


def test_explain_names_a_position_latent_with_its_controls_and_caches_it(client):
    reading, table = client.predict(TOY_EXPLAIN.name, str(BOTTOM_RIGHT), *DEFAULTS, api_name="/explain")
    runs = [row[0] for row in table["data"]]
    assert runs[:3] == ["steered (the explanation)", "unsteered", "random direction, same size"]
    said = {row[0]: row[1] for row in table["data"]}
    assert "in the bottom right" in said["steered (the explanation)"]
    assert said["unsteered"] == "nothing"
    assert "Explanation:" in reading and "from the explanation cache" not in reading
    again, _ = client.predict(TOY_EXPLAIN.name, str(BOTTOM_RIGHT), *DEFAULTS, api_name="/explain")
    assert "from the explanation cache" in again


def test_the_sweep_says_where_the_text_changes(client):
    summary, table = client.predict(TOY_EXPLAIN.name, str(BOTTOM_RIGHT), "0, 32", *DEFAULTS, api_name="/explain_sweep")
    assert [row[0] for row in table["data"]] == [0, 32]
    assert table["data"][0][1] == "nothing"
    assert "first changes at 32" in summary


def test_explaining_the_top_latents_fills_the_attribution_table(client, red_image):
    summary, table = client.predict(
        TOY_EXPLAIN.name,
        "toy",
        handle_file(red_image),
        ", ".join(SHAPES),
        "a {}",
        3,
        *DEFAULTS,
        api_name="/explain_top",
    )
    assert len(table["data"]) == 3 and "Explained the 3 latents" in summary
    explained = {row[0]: row[3] for row in table["data"]}
    out = client.predict(
        handle_file(red_image), ", ".join(SHAPES), "a {}", "", "logit_difference", 3, "toy", api_name="/attribute"
    )
    latents = out[1]
    assert latents["headers"][-1] == "explanation"
    assert {row[0]: row[-1] for row in latents["data"]} == explained


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_tiny_real_vlms_run_the_same_endpoint(client, family):
    """LLaVA (CLIP tower), Gemma 3 (SigLIP) and SmolVLM (SigLIP, pixel shuffle, 5-D pixel values)."""
    pair = f"tiny {family} (random weights)"
    reading, table = client.predict(pair, "5", "add", "50", "", "", "white", "", api_name="/explain")
    assert len(table["data"]) == 4 and "Explanation:" in reading
    _, clamp = client.predict(pair, "5", "clamp", "50", "", "", "black", "7", api_name="/explain")
    assert len(clamp["data"]) == 4


@pytest.mark.parametrize(
    "pair, latent, settings, message",
    [
        (TOY_EXPLAIN.name, "abc", DEFAULTS, "latent id must be a number"),
        (TOY_EXPLAIN.name, "100000", DEFAULTS, "valid: 0 .. 383"),
        (TOY_EXPLAIN.name, "", DEFAULTS, "choose a latent id"),
        (TOY_EXPLAIN.name, "3", ("add", "nan", "", "", "white", ""), "coefficient must be a finite number"),
        (TOY_EXPLAIN.name, "3", ("add", "1e9", "", "", "white", ""), r"within \+-1000"),
        (TOY_EXPLAIN.name, "3", ("add", "8", "", "", "white", "-2"), "sampling seed"),
        ("no such pair", "3", DEFAULTS, "not in the list of choices"),
    ],
)
def test_bad_requests_get_clear_messages_and_the_server_keeps_serving(client, pair, latent, settings, message):
    with pytest.raises(Exception, match=message):
        client.predict(pair, latent, *settings, api_name="/explain")
    reading, _ = client.predict(TOY_EXPLAIN.name, str(BOTTOM_RIGHT), *DEFAULTS, api_name="/explain")
    assert "Explanation:" in reading


def test_explaining_top_latents_of_another_sae_is_refused(client, red_image):
    with pytest.raises(Exception, match="is not the SAE of the model in use"):
        client.predict(
            TINY, "toy", handle_file(red_image), ", ".join(SHAPES), "a {}", 2, *DEFAULTS, api_name="/explain_top"
        )
