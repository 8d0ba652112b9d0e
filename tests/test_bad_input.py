"""What strangers send a public server, through the served app (gradio_client), one kind per test: each gets a
clear message, the server keeps serving, and the next valid request gives exactly the answer it gave before.

Accepted-but-unusual images (16-bit, CMYK, RGBA, palette, animated, EXIF-rotated) are checked against the
picture a viewer would show: the same result as an ordinary RGB PNG of it.
"""

from __future__ import annotations

import html
import io
import json
import re
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from engine.bench import random_sae
from engine.images import MAX_UPLOAD_BYTES
from engine.registry import TOY, DiffPreset, Preset
from engine.sources import AllowedDirs
from engine.specs import TOY_SAE_DIR, ModelSpec, SAESpec
from engine.toyworld import render

from .conftest import SHAPES
from .served import free_port

LABELS = ", ".join(SHAPES)
POSITIONS = "shape in the top left, shape in the top right, shape in the bottom left, shape in the bottom right"
BROKEN = {
    "pickled SAE": "a pickled SAE with a payload",
    "pickled checkpoint": "a pickled checkpoint with a payload",
    "wrong architecture": "a checkpoint of another architecture",
    "SAE config d_in": "an SAE whose config declares another d_in",
    "SAE tensors d_in": "an SAE whose tensors have another d_in",
}
REAL_PAIR = "ViT-B-32 pair (its probe folder is checked before it loads)"


class _WritesAMarker:
    """Unpickling this runs ``open(marker, "w")``: the file's existence proves the payload ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """The operator's directory with the broken model and SAE files a menu entry points at."""
    root = tmp_path_factory.mktemp("operator")
    marker = root / "payload_ran"
    torch.save({"cfg": {"block_layer": 1}, "state_dict": {"W_enc": _WritesAMarker(marker)}}, root / "evil_sae.pt")
    torch.save({"visual.proj": _WritesAMarker(marker)}, root / "evil_model.bin")
    toy_weights = ASSET_TOY_WEIGHTS.read_bytes()
    (root / "toy_weights_as_vit_b32.safetensors").write_bytes(toy_weights)
    # A SAELens folder whose cfg.json declares d_in=768 while its tensors are the toy's (96 wide).
    declared = root / "sae_config_768"
    declared.mkdir()
    cfg = json.loads((TOY_SAE_DIR / "cfg.json").read_text())
    (declared / "cfg.json").write_text(json.dumps({**cfg, "d_in": 768}))
    (declared / "sae_weights.safetensors").write_bytes((TOY_SAE_DIR / "sae_weights.safetensors").read_bytes())
    random_sae(768, 256, 8, "blocks.2.resid_post", seed=0).save(root / "sae_tensors_768")  # consistent, too wide
    return root


ASSET_TOY_WEIGHTS = Path(ModelSpec.toy().name.removeprefix("local-dir:")) / "open_clip_model.safetensors"


@pytest.fixture(scope="module")
def served(workbench, files):
    from app import create_app, serve

    vit = ModelSpec("open_clip", "ViT-B-32", str(files / "toy_weights_as_vit_b32.safetensors"))
    pickled = ModelSpec("open_clip", "ViT-B-32", str(files / "evil_model.bin"))
    choices = {
        "toy": TOY,
        BROKEN["pickled SAE"]: Preset(BROKEN["pickled SAE"], ModelSpec.toy(), SAESpec(str(files / "evil_sae.pt")), ""),
        BROKEN["pickled checkpoint"]: Preset(BROKEN["pickled checkpoint"], pickled, SAESpec.toy(), ""),
        BROKEN["wrong architecture"]: Preset(BROKEN["wrong architecture"], vit, SAESpec.toy(), ""),
        BROKEN["SAE config d_in"]: Preset(
            BROKEN["SAE config d_in"], ModelSpec.toy(), SAESpec(str(files / "sae_config_768")), ""
        ),
        BROKEN["SAE tensors d_in"]: Preset(
            BROKEN["SAE tensors d_in"], ModelSpec.toy(), SAESpec(str(files / "sae_tensors_768")), ""
        ),
    }
    pairs = {
        REAL_PAIR: DiffPreset(
            REAL_PAIR, ModelSpec("open_clip", "ViT-B-32"), vit, SAESpec(str(files / "sae_tensors_768")), ""
        )
    }
    app = create_app("cpu", choices, allowed=AllowedDirs.default([files]), pairs=pairs)
    port = free_port()
    serve(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield Client(f"http://127.0.0.1:{port}/", verbose=False)
    app.close()


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> str:
    image, _ = render.render(render.Scene("circle", "red", "plain", "large", "top left", "absent"), seed=3)
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    image.save(path)
    return str(path)


def steer(client, image, labels=LABELS, template="a {}", latents="3", strengths="0", patches=""):
    return client.predict(image, labels, template, latents, strengths, "scale", patches, api_name="/steer")


def attribute(client, image, labels=LABELS, template="a {}"):
    return client.predict(image, labels, template, "", "logit_difference", 3, api_name="/attribute")


@pytest.fixture(scope="module")
def baseline(served, scene_file):
    """A valid request's answer, taken before any bad input reached the server."""
    return steer(served, handle_file(scene_file))[0]["data"]


@pytest.fixture
def still_right(served, scene_file, baseline):
    """After the test: the server still serves, and a valid request gives exactly the earlier answer."""
    yield
    assert steer(served, handle_file(scene_file))[0]["data"] == baseline


def probabilities(client, path: str, labels: str = LABELS) -> dict[str, float]:
    predictions = attribute(client, handle_file(path), labels)[0]
    return {row[0]: row[1] for row in predictions["data"]}


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def bomb_png(side: int = 20_000) -> bytes:
    """A valid greyscale PNG of side x side black pixels, a few hundred KB (400 megapixels once decoded)."""
    row = b"\x00" * (side + 1)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


# --- files that are not (usable) images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not_an_image", "notes.png is not an image that can be read"),
        ("truncated_png", "broken or truncated"),
        ("zero_bytes", r"empty \(0 bytes\)"),
        ("one_pixel", r"too small \(1x1 pixels\)"),
        ("decompression_bomb", "has too many pixels; the limit is 40 megapixels"),
        ("pickle_payload", "is not an image that can be read"),
    ],
)
def test_an_unreadable_image_gets_a_clear_message(served, scene_file, tmp_path, still_right, kind, message):
    scene = Path(scene_file).read_bytes()
    marker = tmp_path / "payload_ran"
    if kind == "pickle_payload":
        buffer = io.BytesIO()
        torch.save({"x": _WritesAMarker(marker)}, buffer)
    data = {
        "not_an_image": b"this is not an image",
        "truncated_png": scene[: len(scene) // 2],
        "zero_bytes": b"",
        "one_pixel": png_bytes(Image.new("RGB", (1, 1), (200, 0, 0))),
        "decompression_bomb": bomb_png() if kind == "decompression_bomb" else b"",
        "pickle_payload": buffer.getvalue() if kind == "pickle_payload" else b"",
    }[kind]
    name = {"not_an_image": "notes.png", "pickle_payload": "weights.pkl"}.get(kind, f"{kind}.png")
    path = write(tmp_path, name, data)
    if kind == "decompression_bomb":
        assert len(data) < 1_000_000
    for endpoint in (lambda: attribute(served, handle_file(path)), lambda: steer(served, handle_file(path))):
        with pytest.raises(Exception, match=message) as raised:
            endpoint()
        assert "/tmp" not in str(raised.value) and "Traceback" not in str(raised.value)
    assert not marker.exists()


def test_an_oversized_upload_is_refused_by_the_server_with_its_limit(served, tmp_path, still_right):
    path = write(tmp_path, "huge.png", b"\x89PNG" + b"\x00" * (MAX_UPLOAD_BYTES + 1024))
    with pytest.raises(Exception, match=r"(?i)exceed.*size|too large"):
        attribute(served, handle_file(path))


# --- unusual but valid images: read as a viewer shows them -------------------------------------------------------


def test_a_16_bit_image_reads_as_its_8_bit_picture(served, scene_file, tmp_path, still_right):
    grey = np.asarray(Image.open(scene_file).convert("L"), dtype=np.uint16)
    deep = write(tmp_path, "deep.png", png_bytes(Image.fromarray(grey * 257)))  # 16 bits, full range
    assert Image.open(deep).mode.startswith("I")
    flat = write(tmp_path, "flat.png", png_bytes(Image.fromarray(grey.astype(np.uint8))))
    assert probabilities(served, deep) == probabilities(served, flat)


def test_an_rgba_image_is_composited_over_white(served, scene_file, tmp_path, still_right):
    rgba = Image.open(scene_file).convert("RGBA")
    pixels = np.asarray(rgba).copy()
    pixels[:, :24, :3] = (0, 255, 0)  # the left half: green but fully transparent
    pixels[:, :24, 3] = 0
    transparent = write(tmp_path, "rgba.png", png_bytes(Image.fromarray(pixels, "RGBA")))
    pixels[:, :24, :3] = 255  # what a viewer shows there: the white page
    opaque = write(tmp_path, "white.png", png_bytes(Image.fromarray(pixels[..., :3], "RGB")))
    assert probabilities(served, transparent) == probabilities(served, opaque)


def test_a_palette_image_reads_as_its_colours(served, scene_file, tmp_path, still_right):
    palette = Image.open(scene_file).convert("RGB").quantize(64)
    indexed = write(tmp_path, "palette.png", png_bytes(palette))
    rgb = write(tmp_path, "palette_rgb.png", png_bytes(palette.convert("RGB")))
    assert probabilities(served, indexed) == probabilities(served, rgb)


def test_a_cmyk_jpeg_is_accepted_with_the_same_answer(served, scene_file, tmp_path, still_right):
    buffer = io.BytesIO()
    Image.open(scene_file).convert("CMYK").save(buffer, format="JPEG", quality=95)
    cmyk = write(tmp_path, "print.jpg", buffer.getvalue())
    assert Image.open(cmyk).mode == "CMYK"
    shown, reference = probabilities(served, cmyk), probabilities(served, scene_file)
    assert max(shown, key=shown.get) == max(reference, key=reference.get) == "circle"


def test_an_animated_gif_reads_as_its_first_frame(served, scene_file, tmp_path, still_right):
    first = Image.open(scene_file).convert("RGB")
    second, _ = render.render(render.Scene("square", "blue", "striped", "large", "bottom right", "absent"), seed=4)
    buffer = io.BytesIO()
    frames = [frame.quantize(64) for frame in (first, second)]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)
    animated = write(tmp_path, "anim.gif", buffer.getvalue())
    assert Image.open(animated).n_frames == 2
    still = write(tmp_path, "first.png", png_bytes(Image.open(animated).convert("RGB")))
    shown = probabilities(served, animated)
    assert shown == probabilities(served, still) and max(shown, key=shown.get) == "circle"


def test_an_exif_rotated_photo_is_analysed_upright(served, tmp_path, still_right):
    """A phone's portrait photo: pixels stored turned, with EXIF orientation 6 (rotate 90 degrees clockwise to
    show). The shape is at the top left of the upright picture; read sideways it would be at the top right."""
    upright, _ = render.render(render.Scene("circle", "red", "plain", "large", "top left", "absent"), seed=3)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote; orientation 6 undoes it
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    rotated = write(tmp_path, "portrait.jpg", buffer.getvalue())
    sideways = write(tmp_path, "sideways.png", png_bytes(stored))
    shown, ignored = probabilities(served, rotated, POSITIONS), probabilities(served, sideways, POSITIONS)
    assert max(shown, key=shown.get) == "shape in the top left"
    assert max(ignored, key=ignored.get) != "shape in the top left"  # the test would fail if EXIF were ignored


# --- labels, templates, numbers, ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "template", "message"),
    [
        (" , ,", "a {}", "at least two labels"),
        ("circle, square, circle, triangle", "a {}", "'circle' appears 2 times"),
        (", ".join(f"label {i}" for i in range(1001)), "a {}", "at most 1000 labels; got 1001"),
        ("circle, " + "very " * 200 + "long", "a {}", "at most 300 characters"),
        (LABELS, "a shape", r"must contain '\{\}' exactly once"),
        (LABELS, "a {} and {}", r"must contain '\{\}' exactly once.*got 'a \{\} and \{\}'"),
    ],
    ids=["empty", "duplicate", "1001_labels", "very_long_label", "template_without_braces", "template_two_braces"],
)
def test_bad_labels_and_templates_get_a_clear_message(served, scene_file, still_right, labels, template, message):
    with pytest.raises(Exception) as raised:
        attribute(served, handle_file(scene_file), labels, template)
    assert re.search(message, html.unescape(str(raised.value))), str(raised.value)
    assert len(str(raised.value)) < 600  # the message names the problem, not the whole list back


def test_a_thousand_labels_are_accepted(served, scene_file, still_right):
    labels = [f"thing {i}" for i in range(998)] + ["circle", "square"]
    predictions = attribute(served, handle_file(scene_file), ", ".join(labels))[0]
    assert len(predictions["data"]) == 1000 and {row[0] for row in predictions["data"]} == set(labels)


def test_unicode_labels_are_data_and_come_back_intact(served, scene_file, still_right):
    labels = ["круг", "正方形", "triángulo ✓", "cross 🐱", "<b>x</b>"]
    predictions = attribute(served, handle_file(scene_file), ", ".join(labels))[0]
    assert sorted(row[0] for row in predictions["data"]) == sorted(labels)


@pytest.mark.parametrize(
    ("latents", "strengths", "patches", "message"),
    [
        ("3", "nan", "", "finite number"),
        ("3", "inf", "", "finite number"),
        ("3", "-inf", "", "finite number"),
        ("3", "1e30", "", r"within \+-"),
        ("99999", "0", "", "unknown latent id 99999; valid: 0 .. 383"),
        ("-1", "0", "", "unknown latent id -1; valid: 0 .. 383"),
        ("3.5", "0", "", "whole numbers"),
        ("3", "0", "9999", "patch"),
        ("3", "0", "-2", "patch"),
    ],
    ids=["nan", "inf", "-inf", "huge", "unknown_latent", "negative_latent", "fractional_latent", "patch", "neg_patch"],
)
def test_bad_numbers_and_ids_get_a_clear_message(served, scene_file, still_right, latents, strengths, patches, message):
    with pytest.raises(Exception, match=message):
        steer(served, handle_file(scene_file), latents=latents, strengths=strengths, patches=patches)


@pytest.mark.parametrize(
    ("low", "high", "latent", "message"),
    [(-1e30, 3, 3, r"within \+-"), (-1, 3, 10**9, "unknown latent id"), (-1, 3, -5, "unknown latent id")],
    ids=["huge_sweep", "unknown_sweep_latent", "negative_sweep_latent"],
)
def test_bad_sweeps_get_a_clear_message(served, scene_file, still_right, low, high, latent, message):
    with pytest.raises(Exception, match=message):
        served.predict(
            handle_file(scene_file), LABELS, "a {}", latent, low, high, 8, "scale", "", "logit_difference",
            api_name="/sweep",
        )  # fmt: skip


# --- paths and files the operator's menu points at ---------------------------------------------------------------


@pytest.mark.parametrize(
    "probe", ["/etc", "../../../../etc", "assets/../../../../etc:4", "~/.ssh", "/proc/self", "LINK", "LINK/passwd"]
)
def test_path_traversal_in_the_probe_folder_is_refused(served, files, still_right, probe):
    """The probe folder of a real pair is the app's one path field; it is checked before any model loads."""
    link = files / "link_to_etc"
    if not link.exists():
        link.symlink_to("/etc")
    probe = probe.replace("LINK", str(link))
    with pytest.raises(Exception, match="outside the directories the operator allowed") as raised:
        served.predict(REAL_PAIR, probe, LABELS, "a {}", 5, None, api_name="/diff")
    assert "passwd" not in str(raised.value).replace(probe, "")


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "../../../../etc/passwd", "app.py", "/proc/self/environ", "DRAWING", "DRAWINGS"]
)
def test_a_server_path_given_as_the_image_is_refused(served, still_right, path):
    """A raw API call (no client-side upload) naming a file on the server: Gradio refuses any path it did not
    receive as an upload, before a handler runs; so does the image input for a drawing of the app (a file in a
    Gradio static path, which Gradio itself would accept) and for the drawings' folder."""
    from ui import share

    if path.startswith("DRAWING"):
        drawing = share.output_path("forged_", ".png")
        Image.new("RGB", (32, 32), (200, 30, 30)).save(drawing)
        path = str(drawing if path == "DRAWING" else share.IMAGE_DIR)
    base = served.src.rstrip("/") + "/gradio_api"
    forged = {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "x.png"}
    call = httpx.post(
        f"{base}/call/attribute", json={"data": [forged, LABELS, "a {}", "", "logit_difference", 3, "toy"]}
    )
    assert call.status_code == 200
    with httpx.stream("GET", f"{base}/call/attribute/{call.json()['event_id']}", timeout=60) as stream:
        events = "".join(stream.iter_text())
    assert "event: error" in events and "not uploaded by a user" in events, events[:500]
    assert "root:" not in events and "import" not in events


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        ("pickled SAE", "arbitrary objects"),
        ("pickled checkpoint", "arbitrary objects"),
        ("wrong architecture", "do not fit|does not fit"),
        ("SAE config d_in", "declares d_in=768"),
        ("SAE tensors d_in", "d_in=768"),
    ],
)
def test_a_broken_model_or_sae_gets_a_clear_message_and_no_payload_runs(
    served, files, scene_file, still_right, choice, message
):
    with pytest.raises(Exception, match=message) as raised:
        served.predict(BROKEN[choice], api_name="/select_model")
    assert "internal error" not in str(raised.value)
    with pytest.raises(Exception, match=message):  # a direct request for that model says the same
        served.predict(handle_file(scene_file), LABELS, "a {}", "", "logit_difference", 3, BROKEN[choice],
                       api_name="/attribute")  # fmt: skip
    assert not (files / "payload_ran").exists()
