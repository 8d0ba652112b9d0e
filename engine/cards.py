"""Latent cards: one latent shown through the dataset images that activate it most, and its statistics.

A latent's label (ground truth on the toy world, the vocabulary's best concepts on a real model) is a
hypothesis; its top-activating images are the evidence (Bricken et al. 2023; SAEDashboard; Neuronpedia). A card
shows, for one latent of the current SAE, from its feature index (engine.index): the top images, each with that
latent's activation per patch laid over it (the maps the index recorded when it was built, in float16; for an
index without them, recomputed on the spot: either way the model's own, equal to the index's value at its
strongest patch), how often it fires, its mean activation, its activation histogram and quantiles, and its
label.

Cards export as one self-contained HTML page (images inline as data URIs, the histogram as inline SVG, no
script, every piece of text escaped) or as JSON (the same content, thumbnails as data URIs), so that someone who
does not run the app can read them.

>>> from engine.resident import load_workbench
>>> from engine.specs import ModelSpec, SAESpec
>>> from engine.index import find_index
>>> workbench = load_workbench(ModelSpec.toy(), SAESpec.toy(), "cpu")
>>> card = latent_card(workbench, find_index(workbench), 3, n_examples=4)
>>> len(card.examples), card.label.startswith("colour=")
(4, True)
"""

from __future__ import annotations

import base64
import html
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from engine import vocabulary
from engine.errors import UnknownChoiceError
from engine.index import FeatureIndex, LatentStats, bin_edges
from engine.png import png_bytes
from engine.resident import Workbench

THUMBNAIL_PX = 112
LOAD_THREADS = 4
_loader = ThreadPoolExecutor(LOAD_THREADS, thread_name_prefix="card-images")
"""Reads a card's images: a folder's photographs are decoded and a toy's scenes drawn a few at a time (16 toy scenes,
uncached: 14 ms instead of 17 to 20 one after the other on this project's 2 cores)."""


@dataclass(frozen=True)
class CardExample:
    position: int  # in the index's dataset
    name: str
    activation: float  # the index's value: the latent's maximum over the image's tokens
    patch: int  # where it fires most (row-major, class token excluded); -1: on the class token only
    image: Image.Image
    map_HW: np.ndarray  # the latent's activation per patch


@dataclass(frozen=True)
class LatentCard:
    latent: int
    label: str
    label_score: float | None
    label_source: str
    stats: LatentStats
    examples: tuple[CardExample, ...]
    model: str
    sae: str
    dataset: str
    index_images: int

    @property
    def caption(self) -> str:
        score = "" if self.label_score is None else f" ({self.label_score:.2f})"
        return f"latent {self.latent}: {self.label}{score}"


def latent_card(
    workbench: Workbench,
    index: FeatureIndex,
    latent: int,
    template: str | None = None,
    n_examples: int = 16,
    allowed=None,
    concepts: tuple[str, ...] | None = None,
) -> LatentCard:
    """The card of ``latent`` (see the module docstring); ``allowed`` guards a folder dataset's path."""
    workbench.check_latent(latent)
    if index.d_sae != workbench.d_sae:
        raise ValueError(f"the index describes {index.d_sae} latents, the SAE has {workbench.d_sae}")
    stats = index.stats(latent)
    source = index.source(allowed)
    grid = workbench.backend.grid
    recorded_NP = index.top_maps(latent)  # the build's own maps, when it recorded them: no model run here
    if recorded_NP is not None and recorded_NP.shape[1] != grid[0] * grid[1]:
        recorded_NP = None
    top = stats.top[:n_examples]
    pictures = _loader.map(source.load, [p for p, _, _ in top])  # decoded side by side: PIL lets go of the GIL
    loaded = [(j, p, v, patch, picture) for j, ((p, v, patch), picture) in enumerate(zip(top, pictures, strict=True))]
    loaded = [entry for entry in loaded if entry[4] is not None]  # a file removed since the index was built
    examples = []
    if loaded:
        if recorded_NP is not None:
            patch_BP = recorded_NP[[j for j, *_ in loaded]]
        else:
            pixels = workbench.pixels([im for *_, im in loaded])
            ((_, f_BTS, _),) = list(workbench.stream_codes([pixels]))
            patch_BP = f_BTS[:, workbench.backend.n_prefix_tokens :, latent].float().cpu()
        for (_, position, value, patch, image), map_P in zip(loaded, patch_BP, strict=True):
            examples.append(CardExample(position, source.name(position), value, patch, image, map_P.view(grid).numpy()))
    name, score, label_source = vocabulary.latent_names(workbench, [latent], template, concepts)[latent]
    return LatentCard(
        latent,
        name,
        score,
        label_source,
        stats,
        tuple(examples),
        index.manifest["model"],
        workbench.sae_spec.display_name,
        index.manifest["dataset"],
        index.state.n_images,
    )


def thumbnail_px(image: Image.Image, size: int = THUMBNAIL_PX) -> int:
    """The side of ``image``'s thumbnail, at most ``size``: pixel art (an image smaller than ``size``, such as a
    48 px toy scene) is scaled by the largest whole factor that fits, so that every source pixel becomes a square
    of one size and the patch grid falls on pixel edges; a larger image (a photograph) is resized to ``size``."""
    side = max(image.size)
    return side * (size // side) if side < size else size


def heat_thumbnail(image: Image.Image, map_HW: np.ndarray, size: int = THUMBNAIL_PX) -> Image.Image:
    """The image, :func:`thumbnail_px` wide, with the latent's per-patch activation laid over it in red (strongest
    patch: full red at half opacity), its strongest patch outlined. The opacity is constant within a patch, so it
    is computed per patch and laid over the image by PIL's compositing (a fifth of the time of blending every
    pixel in float; within one level of 255 of it, tested)."""
    size = thumbnail_px(image, size)
    resample = Image.NEAREST if max(image.size) < size else Image.BICUBIC
    base = image.convert("RGB").resize((size, size), resample)
    peak = float(map_HW.max())
    heat_hw = np.clip(map_HW / peak, 0, 1) if peak > 0 else np.zeros_like(map_HW)
    alpha_hw = np.round((heat_hw * 255).astype(np.uint8) * 0.5).astype(np.uint8)  # heat in 8 bits, at half opacity
    alpha = Image.fromarray(alpha_hw).resize((size, size), Image.NEAREST)
    picture = Image.composite(Image.new("RGB", (size, size), HEAT_RGB), base, alpha)
    if peak > 0:
        rows, cols = map_HW.shape
        r, c = divmod(int(map_HW.argmax()), cols)
        box = [c * size // cols, r * size // rows, (c + 1) * size // cols - 1, (r + 1) * size // rows - 1]
        ImageDraw.Draw(picture).rectangle(box, outline=(255, 255, 0), width=2)
    return picture


HEAT_RGB = (255, 26, 26)
"""The thumbnails' red (1.0, 0.1, 0.1 in 8 bits)."""


def png_data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def histogram_bars(stats: LatentStats) -> list[tuple[str, int]]:
    """(bin label, count) for the bins from the first to the last non-empty one."""
    counts, edges = stats.histogram, bin_edges()
    used = [b for b, n in enumerate(counts) if n]
    if not used:
        return []
    return [(f"{edges[b]:.2g}–{edges[b + 1]:.2g}", counts[b]) for b in range(used[0], used[-1] + 1)]


def histogram_svg(stats: LatentStats, width: int = 360, height: int = 80) -> str:
    bars = histogram_bars(stats)
    if not bars:
        return "<p>(never fires on this dataset)</p>"
    peak = max(n for _, n in bars)
    step = width / len(bars)
    rects = "".join(
        f'<rect x="{i * step:.1f}" y="{height - height * n / peak:.1f}" width="{max(step - 1, 1):.1f}" '
        f'height="{height * n / peak:.1f}" fill="#c33"><title>{html.escape(label)}: {n}</title></rect>'
        for i, (label, n) in enumerate(bars)
    )
    first, last = html.escape(bars[0][0].split("–")[0]), html.escape(bars[-1][0].split("–")[1])
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 16}" role="img" '
        f'aria-label="activation histogram">{rects}<text x="0" y="{height + 13}" font-size="11">{first}</text>'
        f'<text x="{width}" y="{height + 13}" font-size="11" text-anchor="end">{last}</text></svg>'
    )


def stats_rows(card: LatentCard) -> list[tuple[str, str]]:
    s = card.stats
    return [
        ("label", f"{card.label} ({card.label_source}" + ("" if card.label_score is None else f", {card.label_score:.3g}") + ")"),
        ("fires on (tokens)", f"{s.frequency:.3%}"),
        ("fires on (images)", f"{s.image_frequency:.2%}"),
        ("mean activation when on", f"{s.mean:.4g}"),
        ("quantiles of activation (p50 / p90 / p99)", " / ".join(f"{s.quantiles[q]:.3g}" for q in ("p50", "p90", "p99"))),
        ("dataset", f"{card.dataset} ({card.index_images} images)"),
        ("model · SAE", f"{card.model} · {card.sae}"),
    ]  # fmt: skip


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    "figure{display:inline-block;margin:4px;text-align:center;font-size:.75em;width:120px;vertical-align:top}"
    "img{image-rendering:pixelated}section{border-top:2px solid #999;margin-top:1.5em}"
)


def card_section(card: LatentCard) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in stats_rows(card))
    figures = "".join(
        f'<figure><img src="{png_data_uri(heat_thumbnail(e.image, e.map_HW))}" alt="{html.escape(e.name)}">'
        f"<figcaption>{e.activation:.3g} · {html.escape(e.name)}</figcaption></figure>"
        for e in card.examples
    )
    return (
        f'<section class="card" id="latent-{card.latent}"><h2>{html.escape(card.caption)}</h2>'
        f"<table>{rows}</table><h3>Activation histogram (non-zero activations)</h3>{histogram_svg(card.stats)}"
        f"<h3>Top-activating images (red: where the latent fires; yellow box: its strongest patch)</h3>"
        f"<div>{figures or '<p>(no image activates this latent)</p>'}</div></section>"
    )


def cards_html(cards: list[LatentCard], title: str = "Latent cards") -> str:
    """One self-contained page for the cards (no script, no external resource)."""
    body = "\n".join(card_section(card) for card in cards)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n"
        "<p><small>Exported from the Concept Steering Workbench.</small></p></body></html>\n"
    )


def card_dict(card: LatentCard) -> dict:
    """The card as plain JSON values (thumbnails as PNG data URIs)."""
    s = card.stats
    return {
        "latent": card.latent,
        "label": card.label,
        "label_score": card.label_score,
        "label_source": card.label_source,
        "frequency": s.frequency,
        "image_frequency": s.image_frequency,
        "mean_activation": s.mean,
        "quantiles": s.quantiles,
        "dead": s.dead,
        "histogram": {"bin_edges": bin_edges()[1:-1], "counts": list(s.histogram)},
        "examples": [
            {
                "position": e.position,
                "name": e.name,
                "activation": e.activation,
                "patch": e.patch,
                "heatmap": np.round(e.map_HW, 5).tolist(),
                "thumbnail": png_data_uri(heat_thumbnail(e.image, e.map_HW)),
            }
            for e in card.examples
        ],
        "model": card.model,
        "sae": card.sae,
        "dataset": card.dataset,
        "index_images": card.index_images,
    }


def cards_json(cards: list[LatentCard]) -> str:
    return json.dumps({"cards": [card_dict(c) for c in cards]}, indent=1, allow_nan=False)


# --- Browsing every latent of an SAE ------------------------------------------------------------------------

SORTS = ("frequency (most first)", "frequency (least first)", "mean activation", "latent id")
PAGE_SIZE = 50


@dataclass(frozen=True)
class LatentPage:
    rows: list[dict]  # latent, label, frequency, image_frequency, mean_activation, dead
    page: int  # 1-based, after clamping
    pages: int
    matches: int


def browse(
    index: FeatureIndex,
    labels: dict[int, str],
    query: str = "",
    sort: str = SORTS[0],
    page: int = 1,
    page_size: int = PAGE_SIZE,
    searchable: list[int] | None = None,
) -> LatentPage:
    """One page of the latents: those whose label contains ``query`` (case-insensitive; a whole number also
    matches that latent id), in ``sort`` order. ``labels`` maps a latent to its label wherever one is known;
    ``searchable`` limits a label search to these latents (a real model's latents are named on demand).

    >>> from engine.index import load_index
    >>> from engine.specs import ASSETS
    >>> found = browse(load_index(str(ASSETS / "toy_index")), {7: "colour=red", 9: "shape=cross"}, "RED")
    >>> [row["latent"] for row in found.rows], found.matches
    ([7], 1)
    """
    if sort not in SORTS:
        raise UnknownChoiceError("order", sort, SORTS)
    query = query.strip().lower()
    candidates = range(index.d_sae) if searchable is None or not query else searchable
    if query:
        latents = [i for i in candidates if query in labels.get(i, "").lower() or query == str(i)]
    else:
        latents = list(candidates)
    frequency_S, mean_S = index.frequency_S, index.mean_S
    key = {
        SORTS[0]: lambda i: (-float(frequency_S[i]), i),
        SORTS[1]: lambda i: (float(frequency_S[i]), i),
        SORTS[2]: lambda i: (-float(mean_S[i]), i),
        SORTS[3]: lambda i: i,
    }[sort]
    latents.sort(key=key)
    pages = max(1, -(-len(latents) // page_size))
    page = min(max(1, page), pages)
    shown = latents[(page - 1) * page_size : page * page_size]
    rows = [
        {
            "latent": i,
            "label": labels.get(i, ""),
            "frequency": float(frequency_S[i]),
            "image_frequency": float(index.state.fired_images_S[i]) / max(index.state.n_images, 1),
            "mean_activation": float(mean_S[i]),
            "dead": bool(index.state.fired_tokens_S[i] == 0),
        }
        for i in shown
    ]
    return LatentPage(rows, page, pages, len(latents))
