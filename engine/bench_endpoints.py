"""What a user waits for: each endpoint's round trip through the served app, against Gradio's own floor.

    python -m engine.bench --only endpoints --json

The engine's ratios (engine.bench) say how fast the model work is; a user waits for whole requests, which also
carry Gradio's queue and HTTP round trips, the upload, reading the image, drawing heatmaps, building tables
and plots. This part starts ``python app.py`` on loopback (a separate process, as users meet it) and calls
every interactive endpoint through ``gradio_client``, each call with an image it has not seen (a fresh upload,
so no prefix cache helps), for:

* the toy default (rendered scenes);
* open_clip ViT-B/32 with random weights and a random TopK SAE of 24,576 latents at ``blocks.10.resid_post``
  (noise images, 224 px): the real architecture, no download.

Figures, per model, each taken two ways: through ``gradio_client`` (what a Python user waits for) and through
Gradio's REST API on one keep-alive connection (``http_*``: what a browser or ``curl`` waits for, the server's
whole round trip). gradio_client looks for the answer every 50 ms, so its times move in steps of 50 ms: an
endpoint 10 ms slower than the floor can read 50 ms slower; the REST figures show the server's own cost.

* ``gradio_floor_ms`` / ``http_floor_ms``: p50 of a trivial endpoint (``fill_labels``: text in, text out, no
  model), called once after each timed call so that it sees the same conditions; the least any request costs;
* ``endpoint_ms`` / ``http_ms``: p50 and p95 per endpoint, the image's upload included;
* ``engine_ms`` (ViT-B/32): p50 of the engine calls each handler makes (attribution with its faithfulness check
  and latent names, steering, the sweep, the held-out batch, the image check) timed in this process on the same
  image right after each endpoint call and its floor, while the server is idle (``tls_once_engine_ms`` and
  ``http_engine_ms`` beside the other two ways' calls): the three terms of a ratio are timed in the same seconds;
  ``vs_engine_plus_floor`` is ``endpoint p50 / (engine + floor)`` (``http_vs_engine_plus_floor`` the same with the
  REST figures);
* ``vs_floor`` / ``http_vs_floor`` (toy): ``endpoint p50 / floor``;
* ``tls_once_floor_ms`` / ``tls_once_ms`` and their ratios: the same through a gradio_client whose TLS set-up is
  done once (``ssl_verify`` an ``ssl.SSLContext`` of the same certificate bundle, :func:`tls_once_client`): by
  default gradio_client makes a new HTTP client for every request and every uploaded file, and each one loads the
  certificate bundle again, tens of milliseconds that the floor pays once and an image endpoint twice;
* ``upload_ms``: one image's upload alone, the way gradio_client sends it (a new HTTP client per file, whose
  set-up, TLS certificates included, costs tens of milliseconds on every file: a client-side cost that the
  floor, which uploads nothing, does not carry) and on one keep-alive connection.

The gradio_client side uses ``download_files=False``: the timed span ends when the response (every table, text
and plot, and the addresses of the heatmap files) has arrived, which is when a browser draws the result and
starts loading the heatmaps in parallel. gradio_client's default downloads each output file after the response,
one at a time with a new HTTP client per file (about 15 to 20 ms each on this machine); that client-side cost is
reported apart for ``attribute`` (``attribute_with_downloads_ms``).

Batch jobs are not in the table: ``diff`` (a probe set of scenes), ``explain_top`` and ``export_*`` (files) are
timed by their own figures. The engine never imports Gradio: the server is ``app.py`` in a subprocess and the
client is ``gradio_client``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import attribution, heldout, steering, vocabulary
from engine.edits import Edit
from engine.images import read_image
from engine.resident import Workbench, load_workbench
from engine.specs import ModelSpec, SAESpec

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
TOY_LABELS = "circle, square, triangle, cross"
VIT_LABELS = "dog, cat, car, tree, house, person, bird, boat"
TOP_K = 10
SWEEP_POINTS = 16
FLOOR = "fill_labels"
START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served_app(args: list[str], download_files: bool = False) -> Iterator:
    """``python app.py ARGS`` on a free loopback port; yields a connected ``gradio_client.Client``."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), *args], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    start = time.perf_counter()
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"app.py {' '.join(args)} exited: {process.stderr.read().decode()[-2000:]}")
            if time.perf_counter() - start > START_TIMEOUT_S:
                raise TimeoutError(f"app.py did not answer within {START_TIMEOUT_S} s")
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=download_files)
                break
            except Exception:
                time.sleep(0.3)
        yield client
    finally:
        process.terminate()
        process.wait(timeout=30)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1)}


def image_files(directory: Path, images: list[Image.Image]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(directory / f"{i:04d}.png"))
        image.save(paths[-1])
    return paths


def toy_images(n: int, seed: int = 55_001) -> list[Image.Image]:
    from engine.toyworld.render import render, sample_scenes

    return [render(scene, scene_seed)[0] for scene, scene_seed in sample_scenes(n, seed)]


def noise_images(n: int, size: int = 224, seed: int = 55_002) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def endpoint_calls(model: str, labels: str, template: str, latent: int) -> dict[str, Callable[[object, int], tuple]]:
    """Per endpoint, ``(handle_file(image), call index) -> (args, api_name)`` as a client sends them."""
    return {
        "select_model": lambda image, i: ((model,), "/select_model"),
        "check_image": lambda image, i: ((image, model), "/check_image"),
        "attribute": lambda image, i: ((image, labels, template, "", "logit_difference", TOP_K, model), "/attribute"),
        "heatmap": lambda image, i: ((image, str(latent), template, model), "/heatmap"),
        "steer": lambda image, i: ((image, labels, template, str(latent), "0", "scale", "", model), "/steer"),
        "sweep": lambda image, i: (
            (image, labels, template, latent, -1, 3, SWEEP_POINTS, "scale", "", "logit_difference", model),
            "/sweep",
        ),
        "ripple": lambda image, i: ((labels, template, str(latent), "0", "scale", "", model), "/ripple"),
    }


def toy_extra_calls(template: str, d_sae: int) -> dict[str, Callable[[object, int], tuple]]:
    """The toy's other per-image or per-latent endpoints: the Latents tab and one uncached explanation."""
    explain_settings = ("add", "32", "", "", "white", "")
    return {
        "latents": lambda image, i: (("", "frequency (most first)", 1, template, "toy"), "/latents"),
        "latent_card": lambda image, i: ((str(i % d_sae), template, "toy"), "/latent_card"),
        "explain": lambda image, i: (
            ("toy: LLaVA on the toy CLIP", str((37 * i) % d_sae), *explain_settings),
            "/explain",
        ),
    }


class RestClient:
    """The same calls through Gradio's REST API (``/gradio_api/call/NAME``, then its event stream) on one
    keep-alive HTTP connection, as a browser makes them: the server's whole round trip, without gradio_client's
    polling (it looks for the answer every 50 ms, so its times move in steps of 50 ms)."""

    def __init__(self, url: str):
        import httpx

        self.url, self.http = url.rstrip("/"), httpx.Client(timeout=300)
        self.session = f"bench{os.getpid()}"  # one session, like one open page (a new one costs Gradio ~20 ms)

    def file(self, path: str) -> dict:
        with open(path, "rb") as f:
            answer = self.http.post(f"{self.url}/gradio_api/upload", files={"files": (Path(path).name, f)})
        answer.raise_for_status()
        return {"path": answer.json()[0], "meta": {"_type": "gradio.FileData"}}

    def predict(self, *args, api_name: str) -> str:
        name = api_name.lstrip("/")
        answer = self.http.post(
            f"{self.url}/gradio_api/call/{name}", json={"data": list(args), "session_hash": self.session}
        )
        answer.raise_for_status()
        event = answer.json()["event_id"]
        with self.http.stream("GET", f"{self.url}/gradio_api/call/{name}/{event}") as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    kind = line.removeprefix("event:").strip()
                elif line.startswith("data:") and kind in ("complete", "error"):
                    if kind == "error":
                        raise RuntimeError(f"{api_name}: {line}")
                    return line
        raise RuntimeError(f"{api_name}: the event stream ended without a result")


def time_endpoints(
    client, calls: dict, files: Iterator[str], labels: str, repeats: int, file_arg: Callable, engine: dict | None = None
) -> dict:
    """Per endpoint p50/p95 over ``repeats`` calls (after one warm-up), each with the next unseen image (sent by
    ``file_arg(path)`` inside the timed span: the upload is part of the wait); one floor call after each timed
    call. ``engine`` (endpoint -> the engine work behind it, on an image): after each call and its floor, that
    work is timed in this process on the same image while the server is idle, so that the endpoint, the floor
    and the engine are timed in the same seconds (this shared machine's speed drifts by 20 to 30% over minutes,
    which moved a ratio of figures taken minutes apart as much as any change did). Returns ``{"endpoint_ms",
    "floor_ms", "engine_ms"}`` (the last only with ``engine``: each endpoint's p50 in ms)."""
    from engine.bench import clock

    floor: list[float] = []
    out: dict = {"endpoint_ms": {}}
    for name, make in calls.items():
        seconds, engine_seconds = [], []
        for i in range(repeats + 1):
            path = next(files)
            start = time.perf_counter()
            args, api_name = make(file_arg(path), i)
            client.predict(*args, api_name=api_name)
            if i:
                seconds.append(time.perf_counter() - start)
            start = time.perf_counter()
            client.predict("(unchanged)", labels, api_name=f"/{FLOOR}")
            floor.append(time.perf_counter() - start)
            if engine and name in engine:
                image = read_image(path)
                start = clock()
                with torch.no_grad():
                    engine[name](image)
                if i:
                    engine_seconds.append(clock() - start)
        out["endpoint_ms"][name] = percentiles(seconds)
        if engine_seconds:
            out.setdefault("engine_ms", {})[name] = round(statistics.median(engine_seconds) * 1000, 1)
    out["floor_ms"] = round(statistics.median(floor) * 1000, 1)
    return out


WAYS = 3  # gradio_client with its defaults, gradio_client with its TLS set-up done once, the REST API


def tls_once_client(client):
    """A gradio_client ``Client`` of the same server whose TLS set-up is done once: ``ssl_verify`` is an
    ``ssl.SSLContext`` with the same certificate bundle (certifi's) instead of ``True``. gradio_client makes a
    new HTTP client for every request and every uploaded file, and with ``True`` each one loads the bundle
    again (about 45 ms on this machine); a context is built once and verifies the same way."""
    import ssl

    import certifi
    from gradio_client import Client

    context = ssl.create_default_context(cafile=certifi.where())
    return Client(client.src, verbose=False, download_files=False, ssl_verify=context)


def both_ways(client, calls: dict, files: list[str], labels: str, repeats: int, engine: dict | None = None) -> dict:
    """:func:`time_endpoints` through gradio_client (its defaults, then with the TLS set-up done once), then
    through the REST API (fresh images for each), and what the image's upload alone costs each way; with
    ``engine``, the engine's p50s timed beside each way's calls (``engine_ms``, ``tls_once_engine_ms``,
    ``http_engine_ms``)."""
    from gradio_client import handle_file

    if len(files) < WAYS * len(calls) * (repeats + 1):
        raise ValueError(f"{len(files)} images for {WAYS} ways x {len(calls)} endpoints x {repeats + 1} calls")
    fresh = iter(files)
    rest = RestClient(client.src)
    ways = (
        ("", "gradio_floor_ms", "endpoint_ms", client, handle_file),
        ("tls_once_", "tls_once_floor_ms", "tls_once_ms", tls_once_client(client), handle_file),
        ("http_", "http_floor_ms", "http_ms", rest, rest.file),
    )
    out: dict = {}
    for prefix, floor_key, ms_key, way_client, file_arg in ways:
        figures = time_endpoints(way_client, calls, fresh, labels, repeats, file_arg, engine)
        out[floor_key], out[ms_key] = figures["floor_ms"], figures["endpoint_ms"]
        if "engine_ms" in figures:
            out[f"{prefix}engine_ms"] = figures["engine_ms"]
    out["upload_ms"] = upload_cost(rest, files[:repeats])
    return out


def upload_cost(rest: RestClient, files: list[str]) -> dict[str, float]:
    """p50 of one image's upload alone: ``gradio_client`` style (a new HTTP client per file, as its
    ``Endpoint._upload_file`` does with ``httpx.post``: the client's set-up, TLS certificates included, is paid
    on every file) and on the REST client's one keep-alive connection."""
    import httpx

    def one_post(path: str) -> None:
        with open(path, "rb") as f:
            httpx.post(f"{rest.url}/gradio_api/upload", files={"files": (Path(path).name, f)}).raise_for_status()

    out = {}
    for name, upload in (("new_client_per_file", one_post), ("keep_alive", rest.file)):
        upload(files[0])  # warm-up
        seconds = []
        for path in files:
            start = time.perf_counter()
            upload(path)
            seconds.append(time.perf_counter() - start)
        out[name] = round(statistics.median(seconds) * 1000, 1)
    return out


def downloads_cost(args: list[str], files: list[str], model: str, labels: str, template: str, repeats: int) -> dict:
    """``attribute`` with gradio_client's default (every output file downloaded after the response)."""
    from gradio_client import handle_file

    calls = endpoint_calls(model, labels, template, 0)
    with served_app(args, download_files=True) as client:
        seconds = []
        for i in range(repeats + 1):
            call, api_name = calls["attribute"](handle_file(files[i]), i)
            start = time.perf_counter()
            client.predict(*call, api_name=api_name)
            if i:
                seconds.append(time.perf_counter() - start)
    return percentiles(seconds)


def engine_calls(workbench: Workbench, labels: list[str], template: str, latent: int) -> dict[str, Callable]:
    """The engine work behind each endpoint (what its handler calls, without drawing or tables)."""
    concepts = vocabulary.concept_vocabulary() if workbench.latent_info is None else None
    edit = Edit.removal([latent])
    held = heldout.heldout_for(workbench.model_spec)

    def attribute(image):
        result = attribution.attribute(workbench, image, labels, None, "logit_difference", template)
        top = result.top(TOP_K)
        vocabulary.latent_names(workbench, top, template, concepts)
        attribution.faithfulness(workbench, result, k=TOP_K, template=template)
        attribution.warnings_for(workbench, result.state)

    def heatmap(image):
        (state,) = workbench.site_states([image])
        attribution.patch_map(state.columns([latent])[:, 0], workbench.backend.grid)
        vocabulary.latent_names(workbench, [latent], template, concepts)

    def steer(image):
        steering.steer(workbench, image, labels, edit, template)
        vocabulary.latent_names(workbench, [latent], template, concepts)

    def sweep(image):
        steering.sweep(workbench, image, labels, latent, np.linspace(-1, 3, SWEEP_POINTS).tolist(), template=template)

    def ripple(image):
        images, truth = held(labels)
        steering.ripple(workbench, images, labels, edit, truth, template)
        vocabulary.latent_names(workbench, [latent], template, concepts)

    return {
        "check_image": workbench.image_warnings,
        "attribute": attribute,
        "heatmap": heatmap,
        "steer": steer,
        "sweep": sweep,
        "ripple": ripple,
    }


def toy_figures(repeats: int, directory: Path) -> dict:
    calls = endpoint_calls("toy", TOY_LABELS, "a {}", latent=3)
    args = ["--explain-cache", str(directory / "explain_cache")]
    files = image_files(directory / "toy", toy_images((repeats + 1) * 10 * WAYS))
    with served_app(args) as client:
        from engine.resident import resident_sae

        calls.update(toy_extra_calls("a {}", resident_sae(SAESpec.toy(), "cpu").module.config.d_sae))
        figures = both_ways(client, calls, files, TOY_LABELS, repeats)
    return {
        **figures,
        "vs_floor": ratios(figures["endpoint_ms"], figures["gradio_floor_ms"]),
        "tls_once_vs_floor": ratios(figures["tls_once_ms"], figures["tls_once_floor_ms"]),
        "http_vs_floor": ratios(figures["http_ms"], figures["http_floor_ms"]),
        "attribute_with_downloads_ms": downloads_cost(args, files[::-1], "toy", TOY_LABELS, "a {}", repeats),
    }


def ratios(endpoint_ms: dict, floor: float, engine_ms: dict | None = None) -> dict:
    """Per endpoint ``p50 / (engine + floor)`` (``engine_ms`` absent: 0)."""
    return {name: round(t["p50"] / ((engine_ms or {}).get(name, 0.0) + floor), 2) for name, t in endpoint_ms.items()}


def vit_figures(repeats: int, directory: Path, device: torch.device) -> dict:
    from engine.bench import random_sae

    site = "blocks.10.resid_post"
    sae_dir = directory / "vit_sae"
    random_sae(768, 24_576, 32, site).save(sae_dir)
    model_text, sae_text = "open_clip:ViT-B-32@random", str(sae_dir)
    model = f"{model_text} + {sae_text}"
    args = ["--model", model_text, "--sae", sae_text, "--allow-dir", str(directory), "--device", str(device)]
    calls = endpoint_calls(model, VIT_LABELS, "a photo of a {}.", latent=7)
    files = image_files(directory / "vit", noise_images((repeats + 1) * 7 * WAYS))
    from engine.sources import AllowedDirs

    workbench = load_workbench(
        ModelSpec("open_clip", "ViT-B-32"), SAESpec(sae_text), str(device), allowed=AllowedDirs.default([directory])
    )
    engine = engine_calls(workbench, VIT_LABELS.split(", "), "a photo of a {}.", 7)
    with served_app(args) as client:
        figures = both_ways(client, calls, files, VIT_LABELS, repeats, engine)
    return {
        **figures,
        "vs_engine_plus_floor": ratios(figures["endpoint_ms"], figures["gradio_floor_ms"], figures["engine_ms"]),
        "tls_once_vs_engine_plus_floor": ratios(
            figures["tls_once_ms"], figures["tls_once_floor_ms"], figures["tls_once_engine_ms"]
        ),
        "http_vs_engine_plus_floor": ratios(figures["http_ms"], figures["http_floor_ms"], figures["http_engine_ms"]),
    }


def run(repeats: int, device: torch.device) -> dict:
    """Both models' figures (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp:
        return {
            "endpoint_repeats": repeats,
            "toy": toy_figures(repeats, Path(tmp)),
            "vit_b32": vit_figures(repeats, Path(tmp), device),
        }
