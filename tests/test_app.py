"""The app served on 127.0.0.1 and driven through gradio_client, as a user of the API would."""

import math
import socket

import pytest
from gradio_client import Client, handle_file

from .conftest import SHAPES

LABELS = ", ".join(SHAPES)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client(bench):
    from app import create_app

    app = create_app("cpu")
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
