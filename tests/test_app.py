"""The app served on 127.0.0.1 and driven through gradio_client, as a user of the API would."""

import math
import socket
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from engine.bench import random_sae
from engine.registry import PHOTOS_DIR, TOY, Preset
from engine.sources import AllowedDirs
from engine.specs import ModelSpec, SAESpec

from .conftest import SHAPES

LABELS = ", ".join(SHAPES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


VIT_B32 = "ViT-B-32 (random weights) + random SAE"
UNAVAILABLE = "ViT-B-32 (openai, not cached here)"


@pytest.fixture(scope="module")
def choices(tmp_path_factory):
    """The toy (default), a real architecture with random weights, and a model that cannot be loaded offline."""
    directory = tmp_path_factory.mktemp("sae")
    random_sae(768, 3072, 16, "blocks.10.resid_post", seed=1).save(directory)
    return {
        "toy": TOY,
        VIT_B32: Preset(VIT_B32, ModelSpec("open_clip", "ViT-B-32"), SAESpec(str(directory)), "random weights"),
        UNAVAILABLE: Preset(UNAVAILABLE, ModelSpec("open_clip", "ViT-B-32", "openai"), SAESpec.toy(), "offline"),
    }


@pytest.fixture(scope="module")
def client(bench, choices):
    from app import create_app

    allowed = AllowedDirs.default([Path(c.sae.path) for c in choices.values()])
    concepts = ("cat", "dog", "car", "coffee", "rocket", "red", "striped", "grass", "sky", "water")
    app = create_app("cpu", choices, allowed=allowed, concepts=concepts)
    port = free_port()
    app.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    app.close()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory, image):
    path = tmp_path_factory.mktemp("img") / "scene.png"
    image.save(path)
    return str(path)


def test_attribute_endpoint(client, image_file, bench):
    predictions, latents, gallery, faith, summary, selected = client.predict(
        handle_file(image_file), LABELS, "a {}", "", "logit_difference", 5, api_name="/attribute"
    )
    assert [row[0] for row in predictions["data"]] == SHAPES
    assert math.isclose(sum(row[1] for row in predictions["data"]), 1.0, abs_tol=1e-3)
    assert latents["headers"] == ["latent", "label", "label_score", "attribution", "activation"]
    assert len(latents["data"]) == 5 and 0 <= int(selected) < bench.d_sae
    assert int(selected) == latents["data"][0][0]
    assert len(gallery) == 5 and "Spearman" in summary
    assert len(faith["data"]) == 5


def test_steer_endpoint_moves_the_prediction_and_strength_one_does_not(client, image_file):
    _, latents, *_ = client.predict(
        handle_file(image_file), LABELS, "a {}", "", "logit_difference", 3, api_name="/attribute"
    )
    top = ", ".join(str(row[0]) for row in latents["data"])
    table, _, _ = client.predict(handle_file(image_file), LABELS, "a {}", top, "1", "scale", "", api_name="/steer")
    assert all(row[1] == row[2] for row in table["data"])
    table, _, summary = client.predict(
        handle_file(image_file), LABELS, "a {}", top, "0", "scale", "", api_name="/steer"
    )
    assert any(row[1] != row[2] for row in table["data"]) and "Before" in summary


def test_sweep_endpoint(client, image_file):
    table, plot, summary = client.predict(
        handle_file(image_file), LABELS, "a {}", 3, -1, 3, 9, "scale", "", "logit_difference", api_name="/sweep"
    )
    assert len(table["data"]) == 18  # 9 strengths x (latent, random baseline)
    assert "Target" in summary


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not_an_image", "not an image"),
        ("empty_labels", "at least two labels"),
        ("unknown_latent", "unknown latent id"),
        ("nan_strength", "finite number"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(client, image_file, tmp_path, kind, message):
    bad_file = tmp_path / "notes.png"
    bad_file.write_text("this is not an image")
    picture = handle_file(str(bad_file) if kind == "not_an_image" else image_file)
    labels = " , " if kind == "empty_labels" else LABELS
    latent = "99999" if kind == "unknown_latent" else "3"
    strength = "nan" if kind == "nan_strength" else "0"
    with pytest.raises(Exception, match=message):
        client.predict(picture, labels, "a {}", latent, strength, "scale", "", api_name="/steer")
    table, _, _ = client.predict(handle_file(image_file), LABELS, "a {}", "3", "0", "scale", "", api_name="/steer")
    assert len(table["data"]) == 4


def test_a_real_architecture_runs_through_the_same_endpoints(client):
    photo = handle_file(str(PHOTOS_DIR / "chelsea.jpg"))
    info, labels, template, _ = client.predict(VIT_B32, api_name="/select_model")
    assert "blocks.10.resid_post" in info and "3072 latents" in info
    assert labels.startswith("tench, goldfish") and template == "a photo of a {}."
    labels = "cat, dog, car, coffee"
    _, latents, gallery, faith, summary, selected = client.predict(
        photo, labels, template, "", "logit_difference", 4, VIT_B32, api_name="/attribute"
    )
    assert len(latents["data"]) == 4 and all(row[1] for row in latents["data"])  # vocabulary names
    assert "vocabulary" in summary and "explained variance" in summary
    table, _, _ = client.predict(photo, labels, template, selected, "1", "scale", "", VIT_B32, api_name="/steer")
    assert all(row[1] == row[2] for row in table["data"])
    table, _, _ = client.predict(
        photo, labels, template, int(selected), -1, 3, 5, "scale", "", "logit_difference", VIT_B32, api_name="/sweep"
    )
    assert len(table["data"]) == 10
    ripple = client.predict(labels, template, selected, "0", "scale", "", VIT_B32, api_name="/ripple")
    assert len(ripple["data"]) > 0


def test_an_unavailable_model_gets_a_clear_message_and_the_server_keeps_serving(client, image_file):
    with pytest.raises(Exception, match="not in the local cache"):
        client.predict(UNAVAILABLE, api_name="/select_model")
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("no such model", api_name="/select_model")
    table, _, _ = client.predict(handle_file(image_file), LABELS, "a {}", "3", "0", "scale", "", api_name="/steer")
    assert len(table["data"]) == 4
