"""Many users at once, through the served app: 16 gradio_client clients firing a mix of every endpoint (two
models, different images, edits and modes, the Diff tab's endpoints) get exactly what the same requests get one
at a time; a full queue answers at once that the server is busy (to gradio_client and in the browser), and the
server serves on; outputs leave no files behind."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio.utils import is_static_file
from gradio_client import Client, handle_file
from gradio_client.utils import Status

from engine.bench import random_sae
from engine.cards import SORTS
from engine.registry import TOY, TOY_DIFF, TOY_EXPLAIN, Preset
from engine.sources import AllowedDirs
from engine.specs import ASSETS, PHOTOS_DIR, TOY_SHORTCUT_DIR, TOY_VLM_DIR, ModelSpec, SAESpec
from ui import share

from .conftest import SHAPES
from .served import CHROMIUM, browser_page, free_port

LABELS = ", ".join(SHAPES)
VIT = "ViT-B-32 (random weights) + random SAE"
EXAMPLES = sorted(str(p) for p in (ASSETS / "examples").glob("*.png"))
PHOTO = str(PHOTOS_DIR / "chelsea.jpg")
PHOTO_LABELS = "cat, dog, car, coffee"


@pytest.fixture(scope="module")
def served(workbench, tmp_path_factory):
    from app import create_app, serve

    directory = tmp_path_factory.mktemp("sae")
    random_sae(768, 1024, 16, "blocks.8.resid_post", seed=2).save(directory)
    choices = {"toy": TOY, VIT: Preset(VIT, ModelSpec("open_clip", "ViT-B-32"), SAESpec(str(directory)), "random")}
    pairs = {TOY_DIFF.name: TOY_DIFF} if TOY_SHORTCUT_DIR.is_dir() else {}
    cache = tmp_path_factory.mktemp("explanations")
    app = create_app("cpu", choices, allowed=AllowedDirs.default([directory]), pairs=pairs, explain_cache=str(cache))
    port = free_port()
    serve(app, "127.0.0.1", port, concurrency=4, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", cache
    app.close()


def forget_explanations(cache: Path) -> None:
    """Empty the Explain tab's disk cache, so that each phase generates (and says nothing about a cache hit)."""
    for path in cache.rglob("*"):
        if path.is_file():
            path.unlink()


def requests() -> list[tuple[str, tuple]]:
    """At least 16 requests: attribution, steering (scale, add, at patches), sweeps and ripple on the toy model and
    on a real architecture, the Diff tab's diff and patch, Explain and Latents."""
    image = [handle_file(p) for p in EXAMPLES]
    photo = handle_file(PHOTO)
    out = [
        ("/attribute", (image[0], LABELS, "a {}", "", "logit_difference", 5)),
        ("/attribute", (image[1], LABELS, "a {}", "square", "probability", 3)),
        ("/attribute", (photo, PHOTO_LABELS, "a photo of a {}.", "", "logit_difference", 4, VIT)),
        ("/steer", (image[2], LABELS, "a {}", "3, 40", "0", "scale", "")),
        ("/steer", (image[3], LABELS, "a {}", "7", "4", "add", "0, 1, 6")),
        ("/steer", (image[0], LABELS, "a {}", "12", "2.5", "scale", "14")),
        ("/steer", (photo, PHOTO_LABELS, "a photo of a {}.", "5", "0", "scale", "", VIT)),
        ("/steer", (photo, PHOTO_LABELS, "a photo of a {}.", "9", "3", "add", "", VIT)),
        ("/sweep", (image[4], LABELS, "a {}", 3, -1, 3, 9, "scale", "", "logit_difference")),
        ("/sweep", (image[5], LABELS, "a {}", 40, 0, 4, 5, "add", "", "kl")),
        ("/sweep", (photo, PHOTO_LABELS, "a photo of a {}.", 5, -1, 2, 4, "scale", "", "probability", VIT)),
        ("/ripple", (LABELS, "a {}", "3", "0", "scale", "")),
        ("/heatmap", (image[1], "40", "a {}")),
        ("/check_image", (photo, "toy")),
    ]
    if TOY_SHORTCUT_DIR.is_dir():
        out.append(("/diff", (TOY_DIFF.name, "16", LABELS, "a {}", 5, image[3])))
        out.append(
            ("/patch", (TOY_DIFF.name, image[3], None, LABELS, "a {}", "models", "counterfactual", "logit_difference"))
        )
    # The later tabs, where their assets are built: Explain (the toy LLaVA) and Latents (the toy index).
    if TOY_VLM_DIR.is_dir():
        out.append(("/explain", (TOY_EXPLAIN.name, "40", "add", "8", "", "", "white", "")))
    if (ASSETS / "toy_index").is_dir():
        out.append(("/latents", ("", SORTS[0], 1, "a {}", "toy")))
        out.append(("/latent_card", ("40", "a {}", "toy")))
    while len(out) < 16:
        out.append(("/attribute", (image[len(out) % len(image)], LABELS, "a {}", "", "logit_difference", 2)))
    return out


def comparable(value):
    """A result with every file replaced by the hash of its bytes (file names differ between calls)."""
    if isinstance(value, dict):
        if "path" in value and isinstance(value.get("path"), str) and Path(value["path"]).is_file():
            return comparable(value["path"])
        return {k: comparable(v) for k, v in value.items() if k not in ("url",)}
    if isinstance(value, (list, tuple)):
        return [comparable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and Path(value).is_file():
        return "file:" + hashlib.sha256(Path(value).read_bytes()).hexdigest()
    return value


def run(client: Client, request: tuple[str, tuple]):
    api_name, args = request
    return comparable(client.predict(*args, api_name=api_name))


def test_sixteen_clients_at_once_get_exactly_the_sequential_results(served):
    url, cache = served
    batch = requests()
    assert len(batch) >= 16 and len({name for name, _ in batch}) >= 6
    one = Client(url, verbose=False)
    forget_explanations(cache)
    sequential = [run(one, request) for request in batch]
    forget_explanations(cache)
    clients = [Client(url, verbose=False) for _ in batch]
    start = threading.Barrier(len(batch))

    def fire(i: int):
        start.wait()  # all 16 leave together
        return run(clients[i], batch[i])

    with ThreadPoolExecutor(len(batch)) as pool:
        concurrent = list(pool.map(fire, range(len(batch))))
    for request, alone, together in zip(batch, sequential, concurrent, strict=True):
        assert together == alone, f"{request[0]} differs when run beside others"
    # And once more in reverse order on the same server: no state carried between requests either.
    forget_explanations(cache)
    assert [run(one, request) for request in reversed(batch)] == sequential[::-1]


def test_outputs_leave_no_files_behind_in_the_temporary_directory(served):
    url, _ = served
    """Heatmaps and reports go to one short-lived folder that prunes itself (Gradio's copies are removed by the
    app's delete_cache); nothing is left in the system's temporary directory."""
    tmp = Path(share.OUTPUT_DIR).parent
    before = {p.name for p in tmp.iterdir() if p.is_file()}
    client = Client(url, verbose=False)
    for example in EXAMPLES[:3]:
        client.predict(handle_file(example), LABELS, "a {}", "", "logit_difference", 6, api_name="/attribute")
    client.predict(handle_file(EXAMPLES[0]), LABELS, "a {}", "", "logit_difference", 3, api_name="/export_attribution")
    leaked = {p.name for p in tmp.iterdir() if p.is_file()} - before
    assert not {name for name in leaked if name.startswith(("latent", "attribution_", "patch_"))}, leaked


def test_drawings_are_served_from_their_own_folder_as_they_were_written(served):
    """Heatmaps and thumbnails go to ui.share.IMAGE_DIR, a static path: Gradio answers with the file the handler
    wrote (no hashed copy), serves its bytes, and refuses a path beside it that no handler wrote."""
    url, _ = served
    client = Client(url, verbose=False, download_files=False)
    outputs = client.predict(handle_file(EXAMPLES[0]), LABELS, "a {}", "", "logit_difference", 6, api_name="/attribute")
    (gallery,) = [o for o in outputs if isinstance(o, list)]  # the heatmaps, one per latent of the table
    drawings = [item["image"] for item in gallery]
    assert len(drawings) == 6 and all(d["path"].endswith(".png") for d in drawings), gallery
    image_dir = share.IMAGE_DIR.resolve()
    for drawing in drawings:
        path = Path(drawing["path"]).resolve()
        assert path.parent == image_dir and is_static_file(str(path)), path  # no further checks
        served_bytes = httpx.get(drawing["url"], timeout=30)
        assert served_bytes.status_code == 200 and served_bytes.content == path.read_bytes()
    report = client.predict(
        handle_file(EXAMPLES[0]), LABELS, "a {}", "", "logit_difference", 3, api_name="/export_attribution"
    )
    assert Path(report["path"]).resolve().parent == share.OUTPUT_DIR.resolve()  # HTML: a download ...
    assert not is_static_file(report["path"])  # ... checked by Gradio as any other file
    missing = httpx.get(f"{url.rstrip('/')}/gradio_api/file={image_dir / 'never_written.png'}", timeout=30)
    assert missing.status_code in (403, 404)


def test_the_served_queue_looks_for_work_every_few_milliseconds_and_sums_up_every_hundred_events():
    from app import QUEUE_POLL_S, create_app, serve

    app = create_app("cpu", {"toy": TOY})
    serve(app, "127.0.0.1", free_port(), prevent_thread_lock=True, quiet=True)
    try:
        assert app._queue.sleep_when_free == QUEUE_POLL_S == 0.005
        assert app._queue.ANAYLTICS_CACHE_FREQUENCY == 100  # (sic) its monitoring summary: not after each request
    finally:
        app.close()


def test_a_drawing_is_found_in_the_static_paths_at_the_first_comparison(monkeypatch):
    """Gradio compares an output file with its static paths in turn, resolving both on disk each time: the
    drawings' folder comes first, ahead of the icons gradio registers when imported."""
    import gradio.utils

    share.serve_images_as_they_are()
    compared = []
    real = gradio.utils.is_in_or_equal
    monkeypatch.setattr(
        gradio.utils, "is_in_or_equal", lambda path, static: compared.append(static) or real(path, static)
    )
    drawing = share.output_path("probe_", ".png")
    try:
        assert is_static_file(str(drawing)) and compared == [share.IMAGE_DIR.resolve()]
    finally:
        drawing.unlink()


@pytest.mark.parametrize(("suffix", "folder"), [(".png", "IMAGE_DIR"), (".jpg", "IMAGE_DIR"), (".html", "OUTPUT_DIR")])
def test_old_output_files_are_pruned_by_a_write_at_most_every_few_seconds(monkeypatch, suffix, folder):
    """Drawings and downloads each go to their own folder, and both are pruned."""

    def stale_file():
        path = share.output_path("stale_", suffix)
        share.wait_for_pruning()  # the sweep a write starts runs in the background: let it end first
        old = time.time() - share.OUTPUT_MAX_AGE_S - 60
        os.utime(path, (old, old))
        return path

    monkeypatch.setitem(share._pruned, "at", 0.0)  # the last prune long ago
    first = stale_file()  # this write prunes (nothing stale yet) ...
    second = stale_file()  # ... and this one, within PRUNE_EVERY_S, does not list the directory again
    assert first.exists() and second.exists() and first.parent == getattr(share, folder)
    monkeypatch.setitem(share._pruned, "at", time.time() - share.PRUNE_EVERY_S - 1)
    fresh = share.output_path("fresh_", ".png")  # a drawing's write prunes the downloads too
    share.wait_for_pruning()
    assert not first.exists() and not second.exists() and fresh.exists()


def test_a_write_does_not_wait_for_the_sweep_it_starts(monkeypatch):
    """The sweep of old outputs runs on its own thread: the request whose write starts it goes on at once."""
    started, release, ran_on = threading.Event(), threading.Event(), []

    def slow_sweep(now):
        ran_on.append(threading.current_thread())
        started.set()
        release.wait(5)

    monkeypatch.setattr(share, "sweep_outputs", slow_sweep)
    monkeypatch.setitem(share._pruned, "at", 0.0)
    path = share.output_path("probe_", ".png")  # returns while the sweep is still running
    try:
        assert path.exists() and started.wait(5) and len(ran_on) == 1 and ran_on[0] is not threading.current_thread()
    finally:
        release.set()
        share.wait_for_pruning()
        path.unlink()


@pytest.fixture(scope="module")
def small_queue_url(workbench):
    from app import create_app, serve

    app = create_app("cpu", {"toy": TOY}, pairs={TOY_DIFF.name: TOY_DIFF})
    port = free_port()
    serve(app, "127.0.0.1", port, concurrency=1, queue_size=1, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    app.close()


SLOW_DIFF = (TOY_DIFF.name, "128", LABELS, "a {}", 5, None)  # seconds on this CPU: long enough to fill the queue


def refusal(error: Exception) -> tuple:
    """What a client learns from a refused request: status, Retry-After and message (gradio_client raises
    httpx.HTTPStatusError for any error status other than 503 and 422, with the server's answer attached)."""
    assert isinstance(error, httpx.HTTPStatusError), repr(error)
    response = error.response
    return response.status_code, response.headers.get("retry-after"), response.json()["detail"]


@pytest.mark.skipif(not TOY_SHORTCUT_DIR.is_dir(), reason="the toy pair's assets are not built")
def test_a_full_queue_answers_busy_at_once_and_the_server_recovers(small_queue_url):
    """One request computing and one waiting fill a queue of size 1; the others are told at once, in words."""
    from app import BUSY_RETRY_AFTER_S, busy_message

    clients = [Client(small_queue_url, verbose=False) for _ in range(6)]
    start = threading.Barrier(len(clients))

    def fire(client: Client):
        start.wait()
        began = time.perf_counter()
        try:
            client.predict(*SLOW_DIFF, api_name="/diff")
            return "done", time.perf_counter() - began
        except Exception as error:  # noqa: BLE001 - what the client is told is what is checked
            return refusal(error), time.perf_counter() - began

    with ThreadPoolExecutor(len(clients)) as pool:
        outcomes = list(pool.map(fire, clients))
    refused = [(told, seconds) for told, seconds in outcomes if told != "done"]
    done = [seconds for told, seconds in outcomes if told == "done"]
    assert refused and done, outcomes
    busy = (429, str(BUSY_RETRY_AFTER_S), busy_message(1))
    assert all(told == busy for told, _ in refused), refused
    assert busy[2] == "The server is busy (1 request waiting, the limit). Please try again in a minute."
    assert max(seconds for _, seconds in refused) < min(done), outcomes  # refused at once, not after waiting
    table, *_ = Client(small_queue_url, verbose=False).predict(
        handle_file(EXAMPLES[0]), LABELS, "a {}", "3", "0", "scale", "", api_name="/steer"
    )
    assert len(table["data"]) == len(SHAPES)


def fill_queue(url: str) -> list:
    """Two slow requests on a queue of size 1 (one computing, one waiting), once both are in."""
    jobs = [Client(url, verbose=False).submit(*SLOW_DIFF, api_name="/diff") for _ in range(2)]
    deadline = time.monotonic() + 60
    while any(job.status().code in (Status.STARTING, Status.JOINING_QUEUE) for job in jobs):
        assert time.monotonic() < deadline, [job.status() for job in jobs]
        time.sleep(0.05)
    assert not any(job.done() for job in jobs), "the slow requests finished before the check: make them slower"
    return jobs


@pytest.mark.skipif(not TOY_SHORTCUT_DIR.is_dir(), reason="the toy pair's assets are not built")
@pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing")
def test_a_full_queue_tells_the_browser_it_is_busy(small_queue_url):
    """The page shows the busy message in its error toast (Gradio's frontend shows a 503 only as its own fixed
    text: the reason for 429), then serves the same click once the queue has room."""
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from playwright.sync_api import expect

    from app import busy_message

    errors: list[str] = []
    with browser_page(small_queue_url, 60, errors) as page:
        page.locator(f'button.gallery-item:has(img[src$="/{Path(EXAMPLES[0]).name}"])').click()
        jobs = fill_queue(small_queue_url)
        page.get_by_role("button", name="Attribute", exact=True).click()
        expect(page.get_by_text(busy_message(1)).first).to_be_visible()  # one toast per refused event
        expect(page.get_by_text("Queue is full")).to_have_count(0)
        for job in jobs:
            job.result(timeout=120)
        page.get_by_role("button", name="Attribute", exact=True).click()
        expect(page.get_by_test_id("markdown").filter(has_text="The model says")).to_be_visible(timeout=60_000)
    assert not errors, f"errors in the page: {errors}"
