"""The app served on 127.0.0.1 and driven through gradio_client, as a user of the API would."""

import html
import json
import math
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from engine.bench import random_sae
from engine.registry import TOY, Preset, label_set, label_set_names
from engine.sources import AllowedDirs
from engine.specs import ASSETS, PHOTOS_DIR, ModelSpec, SAESpec
from ui import readings
from ui.common import parse_labels

from .conftest import SHAPES
from .served import free_port

LABELS = ", ".join(SHAPES)


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
def client(workbench, choices):
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


def test_attribute_endpoint(client, image_file, workbench):
    predictions, latents, gallery, faith, summary, selected, warning, reading = client.predict(
        handle_file(image_file), LABELS, "a {}", "", "logit_difference", 5, api_name="/attribute"
    )
    assert sorted(row[0] for row in predictions["data"]) == sorted(SHAPES)
    probabilities = [row[1] for row in predictions["data"]]
    assert probabilities == sorted(probabilities, reverse=True)  # most likely first, like the chart
    assert math.isclose(sum(probabilities), 1.0, abs_tol=5e-3)  # 3 significant digits each
    assert reading.startswith(f"The model says **{predictions['data'][0][0]}**")
    assert latents["headers"] == ["latent", "label", "label_score", "attribution", "activation"]
    assert len(latents["data"]) == 5 and 0 <= int(selected) < workbench.d_sae
    assert int(selected) == latents["data"][0][0]
    assert len(gallery) == 5 and "Spearman" in summary
    assert len(faith["data"]) == 5


def test_steer_endpoint_moves_the_prediction_and_strength_one_does_not(client, image_file):
    _, latents, *_ = client.predict(
        handle_file(image_file), LABELS, "a {}", "", "logit_difference", 3, api_name="/attribute"
    )
    top = ", ".join(str(row[0]) for row in latents["data"])
    table, _, _, reading = client.predict(
        handle_file(image_file), LABELS, "a {}", top, "1", "scale", "", api_name="/steer"
    )
    assert all(row[1] == row[2] for row in table["data"]) and "does not change it" in reading
    table, plot, summary, reading = client.predict(
        handle_file(image_file), LABELS, "a {}", top, "0", "scale", "", api_name="/steer"
    )
    assert any(row[1] != row[2] for row in table["data"]) and "Before" in summary
    assert reading.startswith("Before the edit the model says") and "removing latent" in reading
    # The chart draws before and after side by side: one bar per label and run, never stacked on one label.
    bars = [row[0] for row in plot["data"]]
    assert len(bars) == len(set(bars)) == 2 * len(SHAPES)


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
    table, *_ = client.predict(handle_file(image_file), LABELS, "a {}", "3", "0", "scale", "", api_name="/steer")
    assert len(table["data"]) == 4


def test_a_real_architecture_runs_through_the_same_endpoints(client):
    photo = handle_file(str(PHOTOS_DIR / "chelsea.jpg"))
    info, labels, template, _ = client.predict(VIT_B32, api_name="/select_model")
    assert "blocks.10.resid_post" in info and "3072 latents" in info
    assert labels.startswith("tench, goldfish") and template == "a photo of a {}."
    labels = "cat, dog, car, coffee"
    _, latents, gallery, faith, summary, selected, *_ = client.predict(
        photo, labels, template, "", "logit_difference", 4, VIT_B32, api_name="/attribute"
    )
    assert len(latents["data"]) == 4 and all(row[1] for row in latents["data"])  # vocabulary names
    assert "vocabulary" in summary and "explained variance" in summary
    table, *_ = client.predict(photo, labels, template, selected, "1", "scale", "", VIT_B32, api_name="/steer")
    assert all(row[1] == row[2] for row in table["data"])
    table, *_ = client.predict(
        photo, labels, template, int(selected), -1, 3, 5, "scale", "", "logit_difference", VIT_B32, api_name="/sweep"
    )
    assert len(table["data"]) == 10
    ripple = client.predict(labels, template, selected, "0", "scale", "", VIT_B32, api_name="/ripple")
    assert len(ripple["data"]) > 0


def test_an_unavailable_model_gets_a_clear_message_and_the_server_keeps_serving(client, image_file):
    with pytest.raises(Exception, match="not in the local cache") as raised:
        client.predict(UNAVAILABLE, api_name="/select_model")
    assert html.escape(UNAVAILABLE) in str(raised.value)  # the message names the model, not only its SAE
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("no such model", api_name="/select_model")
    table, *_ = client.predict(handle_file(image_file), LABELS, "a {}", "3", "0", "scale", "", api_name="/steer")
    assert len(table["data"]) == 4


def test_every_shipped_label_set_fills_the_labels_box_and_is_accepted(client, tmp_path):
    small = str(tmp_path / "small.png")
    Image.new("RGB", (32, 32), (200, 40, 40)).save(small)
    assert label_set_names()
    for name in label_set_names():
        text = client.predict(name, "circle, square", api_name="/fill_labels")
        assert parse_labels(text) == list(label_set(name))  # each label once, in the file's order
        predictions, latents, *_ = client.predict(
            handle_file(small), text, "a {}", "", "logit_difference", 1, api_name="/attribute"
        )
        assert len(predictions["data"]) == len(label_set(name)) and len(latents["data"]) == 1
    assert client.predict("(unchanged)", "circle, square", api_name="/fill_labels") == "circle, square"


def test_a_photograph_on_the_toy_model_is_warned_about_before_and_with_the_result(client):
    photo = handle_file(str(PHOTOS_DIR / "chelsea.jpg"))
    early = client.predict(photo, "toy", api_name="/check_image")
    *_, warning, reading = client.predict(photo, LABELS, "a {}", "", "logit_difference", 3, api_name="/attribute")
    for text in (early, warning):
        assert "Warning" in text and "reconstructs only" in text
    assert "Warning" not in reading  # the warning has its own element, above the tables


def test_the_toy_examples_raise_no_warning(client):
    example = sorted((ASSETS / "examples").glob("*.png"))[0]
    assert client.predict(handle_file(str(example)), "toy", api_name="/check_image") == ""


def test_the_sweep_summary_names_the_strengths_between_which_the_answer_changes(client, image_file):
    """Read the returned table outward from strength 1 (scale mode): the summary must name the last strength that
    keeps the unedited answer and the first that does not."""
    _, latents, *_ = client.predict(
        handle_file(image_file), LABELS, "a {}", "", "logit_difference", 5, api_name="/attribute"
    )
    for latent in [row[0] for row in latents["data"]]:
        table, _, summary = client.predict(
            handle_file(image_file), LABELS, "a {}", latent, -6, 1, 15, "scale", "", "logit_difference",
            api_name="/sweep",
        )  # fmt: skip
        rows = [row for row in table["data"] if row[1] == f"latent {latent}"]
        unedited = next(row[5] for row in rows if row[0] == 1)
        below = sorted((row for row in rows if row[0] < 1), key=lambda row: -row[0])
        flip = next((k for k, row in enumerate(below) if row[5] != unedited), None)
        if flip is None or flip == 0:
            continue
        assert f"Unedited (strength 1) the model says **{unedited}**" in summary
        assert f"down to {readings.number(below[flip - 1][0])} and becomes **{below[flip][5]}** at " in summary
        assert summary.rstrip().split(" at ", 2)[1].startswith(readings.number(below[flip][0]))
        return
    pytest.fail("no top latent changes the answer between strengths -6 and 1")


def test_tables_show_three_significant_digits(client, image_file):
    table, _, _ = client.predict(
        handle_file(image_file), LABELS, "a {}", 3, -1, 3, 7, "scale", "", "logit_difference", api_name="/sweep"
    )
    numbers = [value for row in table["data"] for value in row if isinstance(value, float)]
    assert numbers and all(value == readings.significant(value) for value in numbers)
    shown = [value for row in table["metadata"]["display_value"] for value in row]
    assert all(len(value.lstrip("-").replace(".", "").lstrip("0").split("e")[0]) <= 3 for value in shown[2::6])


def test_a_target_with_markup_comes_back_escaped_with_both_quotes(client, image_file):
    label = "<a href=x>dog</a>"
    with pytest.raises(Exception) as raised:
        client.predict(handle_file(image_file), LABELS, "a {}", label, "logit_difference", 3, api_name="/attribute")
    message = str(raised.value)
    assert f"&#x27;{html.escape(label)}&#x27;" in message and label not in message


def test_the_not_an_image_message_shows_no_server_path(client, tmp_path):
    bad_file = tmp_path / "notes.png"
    bad_file.write_text("this is not an image")
    with pytest.raises(Exception, match="not an image") as raised:
        client.predict(handle_file(str(bad_file)), LABELS, "a {}", "", "logit_difference", 3, api_name="/attribute")
    assert "notes.png" in str(raised.value)
    assert "/tmp" not in str(raised.value) and "gradio" not in str(raised.value)


def test_the_analysis_exports_as_one_self_contained_html_file(client, image_file):
    """The shareable report: everything inline (opens offline), the reading and tables in it, user text escaped."""
    from pathlib import Path

    labels = f"{LABELS}, <b>dog</b>"
    exported = client.predict(
        handle_file(image_file), labels, "a {}", "", "logit_difference", 4, api_name="/export_attribution"
    )
    page = Path(exported if isinstance(exported, str) else exported["path"]).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") >= 5  # image + 4 heatmaps
    assert "The model says" in page and "Top latents" in page and "Faithfulness" in page
    assert "&lt;b&gt;dog&lt;/b&gt;" in page and "<b>dog</b>" not in page
    assert "http://" not in page and "https://" not in page and "/tmp/" not in page


# The Latents tab (ui/latents_tab.py) on the toy model and its shipped feature index.


def test_latent_card_endpoint(client, workbench):
    gallery, summary, histogram = client.predict("3", "a {}", "toy", api_name="/latent_card")
    assert len(gallery) == 16 and all(Path(item["image"]).is_file() for item in gallery)
    assert workbench.latent_info.labels[3] in summary
    assert sum(row[1] for row in histogram["data"]) > 0


def test_latents_endpoint_pages_and_searches(client):
    table, status, page = client.predict("marker", "frequency (most first)", 1, "a {}", "toy", api_name="/latents")
    assert table["data"] and all("marker" in row[1] for row in table["data"]) and page == 1
    with pytest.raises(Exception, match="not in the list of choices"):
        client.predict("", "no such order", 1, "a {}", "toy", api_name="/latents")


def test_export_cards_endpoint(client):
    path = client.predict("3,10", "", "json", "a {}", "toy", api_name="/export_cards")
    assert [card["latent"] for card in json.loads(Path(path).read_text())["cards"]] == [3, 10]


def test_the_benchs_end_to_end_calls_match_the_served_api(client, image_file, workbench):
    """engine.bench_endpoints times these exact calls: each is accepted and answers (toy and ViT-B/32)."""
    from engine import bench_endpoints

    for model, labels, template in (("toy", LABELS, "a {}"), (VIT_B32, "cat, dog, car", "a photo of a {}.")):
        for name, make in bench_endpoints.endpoint_calls(model, labels, template, latent=3).items():
            args, api_name = make(handle_file(image_file), 0)
            assert client.predict(*args, api_name=api_name) is not None, name
    image = Image.open(image_file).convert("RGB")
    for run in bench_endpoints.engine_calls(workbench, LABELS.split(", "), "a {}", latent=3).values():
        run(image)  # the engine work the bench times beside each endpoint


def test_a_gradio_client_with_its_tls_set_up_done_once_answers_the_same_without_reloading_certificates(
    client, image_file, monkeypatch
):
    """The bench's second gradio_client (engine.bench_endpoints.tls_once_client): same answers, and the
    certificate bundle is loaded when it is made, never per request or per uploaded file as with the default."""
    import ssl

    from engine import bench_endpoints

    loads = []
    original = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(
        ssl.SSLContext, "load_verify_locations", lambda self, *a, **k: (loads.append(1), original(self, *a, **k))[1]
    )
    once = bench_endpoints.tls_once_client(client)
    made = len(loads)
    call = (LABELS, "a {}", "3", "0", "scale", "", "toy")
    answer = once.predict(handle_file(image_file), *call, api_name="/steer")
    assert len(loads) == made
    assert client.predict(handle_file(image_file), *call, api_name="/steer") == answer
    assert len(loads) >= made + 2  # the default client: once for the upload, once for the request
