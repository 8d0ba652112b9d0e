"""The Diff tab's endpoints served on 127.0.0.1 and driven through gradio_client: the toy pair, and a real
architecture (open_clip ViT-B-32 with random weights against a perturbed copy loaded from a safetensors file)."""

import json
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from engine.bench import random_sae
from engine.registry import TOY_DIFF, DiffPreset
from engine.sources import AllowedDirs
from engine.specs import PHOTOS_DIR, TOY_SHORTCUT_DIR, ModelSpec, SAESpec
from engine.toyworld import render

from .conftest import SHAPES
from .served import free_port, perturbed_checkpoint

LABELS = ", ".join(SHAPES)
VIT_PAIR = "ViT-B-32 (random) vs a perturbed copy"
pytestmark = pytest.mark.skipif(not TOY_SHORTCUT_DIR.is_dir(), reason="the toy pair's assets are not built")


@pytest.fixture(scope="module")
def vit_pair(tmp_path_factory):
    """A fine-tuned checkpoint as users bring one: the reference's state dict, changed, as safetensors."""
    directory = tmp_path_factory.mktemp("vit_pair")
    random_sae(768, 1024, 8, "blocks.6.resid_post", seed=3).save(directory / "sae")
    reference = ModelSpec("open_clip", "ViT-B-32")
    intervened = perturbed_checkpoint(reference, 9, directory / "finetuned.safetensors")
    return directory, DiffPreset(VIT_PAIR, reference, intervened, SAESpec(str(directory / "sae")), "random weights")


@pytest.fixture(scope="module")
def client(workbench, vit_pair):
    from app import create_app
    from engine.registry import TOY

    directory, pair = vit_pair
    app = create_app(
        "cpu", {"toy": TOY}, allowed=AllowedDirs.default([directory]), pairs={TOY_DIFF.name: TOY_DIFF, VIT_PAIR: pair}
    )
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    app.close()


@pytest.fixture(scope="module")
def marker_image(tmp_path_factory):
    image, _ = render.render(render.Scene("circle", "green", "plain", "large", "bottom left", "present"), seed=5)
    path = tmp_path_factory.mktemp("img") / "marker.png"
    image.save(path)
    return str(path)


def test_the_diff_endpoint_names_the_planted_shortcut_and_writes_the_report(client, marker_image):
    summary, behaviour, representation, triggers, latents, report = client.predict(
        TOY_DIFF.name, "32", LABELS, "a {}", 10, handle_file(marker_image), api_name="/diff"
    )
    assert "marker=present" in summary
    assert triggers["data"][0][2] == "marker=present"
    assert len(latents["data"]) == 10
    assert [row[0] for row in behaviour["data"]] == SHAPES
    paths = [Path(item) if isinstance(item, str) else Path(item["path"]) for item in report]
    markdown = next(p for p in paths if p.suffix == ".md").read_text()
    facts = json.loads(next(p for p in paths if p.suffix == ".json").read_text())
    assert "Most telling concept" in markdown and facts["triggers"][0]["name"] == "marker=present"
    assert facts["patching"]["denoising"]["all_tokens_recovered"]


def test_the_patch_endpoint_shows_denoising_and_noising_apart(client, marker_image):
    summary, gallery, table = client.predict(
        TOY_DIFF.name, handle_file(marker_image), None, LABELS, "a {}", "models", "counterfactual",
        "logit_difference", api_name="/patch",
    )  # fmt: skip
    assert "Writing the reference's residual stream" in summary and "noising is shown apart" in summary
    assert "lies after the vision tower" in summary
    assert len(gallery) == 2 * 4  # two directions x four blocks
    assert {row[0] for row in table["data"]} == {"denoising", "noising"}


def test_patching_inside_one_model_needs_a_counterfactual_or_says_noise_is_out_of_distribution(client, marker_image):
    with pytest.raises(Exception, match="counterfactual"):
        client.predict(
            TOY_DIFF.name, handle_file(marker_image), None, LABELS, "a {}", "intervened", "counterfactual",
            "logit_difference", api_name="/patch",
        )  # fmt: skip
    summary, _, _ = client.predict(
        TOY_DIFF.name, handle_file(marker_image), None, LABELS, "a {}", "intervened", "gaussian_noise",
        "logit_difference", api_name="/patch",
    )  # fmt: skip
    assert "out of distribution" in summary and "token" in summary


def test_a_real_architecture_pair_runs_through_the_same_endpoints(client):
    photo = handle_file(str(PHOTOS_DIR / "chelsea.jpg"))
    labels = "cat, dog, car, coffee"
    summary, behaviour, representation, triggers, latents, report = client.predict(
        VIT_PAIR, f"{PHOTOS_DIR}:4", labels, "a photo of a {}.", 5, photo, api_name="/diff"
    )
    assert "4 images from" in summary and len(latents["data"]) == 5
    cka = {row[0]: row[2] for row in representation["data"] if row[1] == "cka"}
    assert cka[0] == pytest.approx(1.0, abs=1e-4) and cka[11] < 1.0  # the copy differs from block 9 on
    summary, gallery, _ = client.predict(
        VIT_PAIR, photo, None, labels, "a photo of a {}.", "models", "counterfactual", "logit_difference",
        api_name="/patch",
    )  # fmt: skip
    assert len(gallery) == 2 * 12


def test_a_probe_folder_outside_the_allowed_directories_is_refused(client):
    with pytest.raises(Exception, match="outside the directories the operator allowed"):
        client.predict(VIT_PAIR, "/etc", "cat, dog", "a photo of a {}.", 5, None, api_name="/diff")
