"""A shareable report: the current analysis as one self-contained HTML file, for people who do not run the app.

Everything is inline (images as base64 data URIs, styles in the page), so the file opens offline, from an
e-mail or a chat, and shows exactly what the app showed. Every piece of text that came from the user or the
model (labels, template, latent names, file names) is escaped: a shared file must never carry markup into
someone else's browser.

>>> page = analysis_html("Attribution", "<b>dog</b>", [], {"headers": ["a"], "rows": [["<i>x</i>"]]}, [])
>>> "&lt;b&gt;dog&lt;/b&gt;" in page and "<b>dog</b>" not in page and "&lt;i&gt;x&lt;/i&gt;" in page
True
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gradio.utils import get_upload_folder, set_static_paths
from PIL import Image

log = logging.getLogger(__name__)

STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "figure{display:inline-block;margin:6px;text-align:center;font-size:0.85em;max-width:220px}"
    "img{image-rendering:pixelated;width:200px}.warning{background:#fff3cd;padding:8px;border-radius:4px}"
)


def plain(markdown: str) -> str:
    """Markdown as it reads: emphasis markers dropped (the page shows text, not markup)."""
    return re.sub(r"(\*\*|__|\*|`)", "", markdown).strip()


def image_uri(image: Image.Image | str | Path) -> str:
    """A PNG data URI of an image (or of an image file)."""
    buffer = io.BytesIO()
    if isinstance(image, Image.Image):
        image.convert("RGB").save(buffer, format="PNG")
    else:
        with Image.open(image) as picture:
            picture.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def table_html(table: dict) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in table["headers"])
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in table["rows"])
    return f"<table><tr>{head}</tr>{rows}</table>"


def analysis_html(
    title: str,
    reading: str,
    warnings: Sequence[str],
    *tables_and_figures,
) -> str:
    """The page: a title, the warnings, the plain-language reading, then tables (dicts with ``headers`` and
    ``rows``) and figures (lists of (image, caption)) in the order given."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts += [f'<p class="warning">{html.escape(plain(w))}</p>' for w in warnings if w.strip()]
    parts += [f"<p>{html.escape(plain(line))}</p>" for line in reading.split("\n\n") if line.strip()]
    for item in tables_and_figures:
        if isinstance(item, dict):
            if item.get("title"):
                parts.append(f"<h2>{html.escape(item['title'])}</h2>")
            parts.append(table_html(item))
        else:
            parts.append(
                "<div>"
                + "".join(
                    f'<figure><img src="{image_uri(image)}" alt=""><figcaption>{html.escape(caption)}</figcaption></figure>'
                    for image, caption in item
                )
                + "</div>"
            )
    body = "\n".join(parts)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n{body}\n"
        "<p><small>Exported from the Concept Steering Workbench.</small></p></body></html>\n"
    )


OUTPUT_DIR = Path(get_upload_folder()) / "workbench-outputs"
"""Downloads (reports, exported cards): inside Gradio's own cache folder, so a handler's file there is served as it
is, where a file elsewhere is first hashed and copied into the cache."""
IMAGE_DIR = Path(get_upload_folder()) / "workbench-images"
"""What the pages show (heatmaps, card thumbnails: PNG and JPEG only, under fresh random names): a Gradio static
path (:func:`serve_images_as_they_are`). Gradio checks every output file twice per response (once for the
session's copy of the page, once for the answer), each time against the blocked, allowed and created folders and
the cache folder: six path resolutions a file. A file in a static path is compared with the static paths only:
a card's 16 thumbnails cost Gradio 9 ms instead of 27 on this project's 2 cores with this folder third in the
list, less now that it is first (:func:`serve_images_as_they_are`). Nothing but the app's own drawings is written
there, and the image inputs refuse a path into it (ui.common.ImageInput: Gradio takes a static file as an input
without its upload check)."""
IMAGE_SUFFIXES = (".png", ".jpg")
OUTPUT_MAX_AGE_S = 3600
PRUNE_EVERY_S = 10
"""A handler's output file is what the user's page shows, so it lives as long as the files Gradio caches for the
app (an hour: ui.layout.DELETE_CACHE, which removes them too). Files older than ``OUTPUT_MAX_AGE_S`` are removed
by a write at most every ``PRUNE_EVERY_S`` (listing the directory on every write cost 15 ms per heatmap once a
busy server had written a thousand files), so the directory stays bounded by what an hour of requests write. The
sweep runs on a thread of its own, not in the request whose write started it: with 12,600 files in the folder it
took 52 to 58 ms on this project's 2 cores."""
_pruned = {"at": 0.0}
_prune_lock = threading.Lock()
_sweeper = ThreadPoolExecutor(1, thread_name_prefix="prune-outputs")


@functools.cache
def serve_images_as_they_are() -> None:
    """Register :data:`IMAGE_DIR` as a Gradio static path, once per process, first in Gradio's list of them.

    Gradio keeps one list for every app in the process and compares a file with each entry in turn until one
    holds it, resolving both paths on disk each time. Its own two icons (registered when gradio is imported, deep
    in site-packages) come first, so each of our files cost three comparisons, 0.17 ms each on this project's 2
    cores: 4 ms of a toy Attribution answer (six heatmaps, each checked twice). Moved to the front, one. Gradio
    has no public way to order the list; where its private one is missing, the order stays as it was."""
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    set_static_paths([IMAGE_DIR])
    try:
        from gradio.data_classes import _StaticFiles
    except ImportError:
        return
    ours = IMAGE_DIR.resolve()
    _StaticFiles.all_paths.sort(key=lambda path: path != ours)  # stable: ours first, the rest in their order


def prune_outputs(now: float, force: bool = False) -> None:
    """Start removing the output files older than :data:`OUTPUT_MAX_AGE_S` at ``now``, in the background, unless
    that was started in the last :data:`PRUNE_EVERY_S` (``force``: regardless). :func:`wait_for_pruning` waits
    for it."""
    with _prune_lock:
        if not force and now - _pruned["at"] < PRUNE_EVERY_S:
            return
        _pruned["at"] = now
    _sweeper.submit(sweep_outputs, now).add_done_callback(report_failed_sweep)


def report_failed_sweep(done) -> None:
    """Log what stopped a background sweep (nobody waits for it to see the error); the next one tries again."""
    if not done.cancelled() and done.exception() is not None:
        log.warning("could not prune old output files: %s", done.exception())


def wait_for_pruning() -> None:
    """Return once every sweep :func:`prune_outputs` started has finished (they run one at a time, in order)."""
    _sweeper.submit(lambda: None).result()


def sweep_outputs(now: float) -> None:
    """Remove the output files older than :data:`OUTPUT_MAX_AGE_S` at ``now``."""
    for directory in (OUTPUT_DIR, IMAGE_DIR):
        for old in directory.iterdir() if directory.is_dir() else ():
            try:
                if now - old.stat().st_mtime > OUTPUT_MAX_AGE_S:
                    old.unlink()
            except FileNotFoundError:  # removed by a concurrent request
                continue


def output_path(prefix: str, suffix: str) -> Path:
    """A fresh, unique path for one output file: an image (:data:`IMAGE_SUFFIXES`) in :data:`IMAGE_DIR`, anything
    else in :data:`OUTPUT_DIR` (see :data:`PRUNE_EVERY_S` for how old ones go)."""
    directory = IMAGE_DIR if suffix in IMAGE_SUFFIXES else OUTPUT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    prune_outputs(time.time())
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    os.close(handle)
    return Path(name)


def write_file(text: str, prefix: str, suffix: str = ".html") -> str:
    """Write a downloadable file (a report) to a short-lived path (:func:`output_path`); returns the path."""
    path = output_path(prefix, suffix)
    path.write_text(text, encoding="utf-8")
    return str(path)
