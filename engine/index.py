"""The feature index: every latent of an SAE in the context of a dataset, built once, read by the latent cards.

    python -m engine.index build --model toy --sae assets/toy_sae --data toy:4096@777000 --out /tmp/toy_index
    python -m engine.index build --model open_clip:ViT-B-32@openai --sae /saes/b32 --data /data/images --out IDX
    accelerate launch --num_processes 4 -m engine.index build ...same flags...      # data-parallel
    python -m engine.index export --index IDX --latents 12,40 --out cards.html       # or cards.json

**What it records** (the dashboards of Bricken et al. 2023, SAEDashboard, Neuronpedia, SAELens' quantiles):
per latent, the ``top_n`` images where it fires most (an image's activation is the latent's maximum over its
tokens, and with it the patch where the latent fires most, for the thumbnail), how often it fires (share of
tokens; share of images), its mean non-zero activation, and a histogram of its non-zero activations; the
latents that never fire on the dataset are dead. A latent's top images are its best evidence of what it means:
a card shows them with the latent's heatmap on each.

**Histogram.** Fixed bins shared by every latent and every SAE: 8 per decade from 1e-4 to 1e4 (64 bins), an
underflow and an overflow bin, over the absolute values of the non-zero activations (in activation units, as
engine.resident's code). Fixed bins make the index one pass, mergeable across processes and resumable; a
quantile read from it is exact to within a bin (a factor 10^(1/8) = 1.33).

**On disk** (``index.safetensors`` + ``manifest.json``, both documented here):

    top_values_SN   float32  the top activations per latent, descending (-inf where fewer than N images fired)
    top_images_SN   int64    their images: positions in the dataset (-1 where none)
    top_patches_SN  int64    the patch (0-based, row-major, class token excluded) where the latent fires most in
                             that image; -1 when it fires on the class token only
    top_maps_SNP    float16  the latent's activation on every patch of each of those images (row-major; zeros
                             where no image): a card's heatmaps, read instead of running the model again
                             (optional: recorded when the tensor fits PATCH_MAPS_MAX_BYTES, or as asked)
    fired_tokens_S  int64    tokens the latent fired on
    fired_images_S  int64    images it fired on (anywhere)
    sum_S           float64  sum of its activations
    histogram_SB    int64    counts of |activation| per bin (BIN_EDGES; bin 0 below 1e-4, the last above 1e4)
    unreadable_U    int64    dataset positions of files that could not be read (skipped)
    progress        int64    [images indexed, tokens, images_done]: how far the build got (resuming reads it)

``manifest.json`` names the model (the command-line syntax of engine.registry), the SAE (its path and a
fingerprint of its weight files: an index is shown only with the SAE it was built for), the dataset
(``toy:N@SEED`` or a folder; toy images are re-rendered from their seeds rather than stored), the counts
(images, tokens, unreadable), the ``top_n``, the processes, the command, and ``images_done`` (how far a
resumable build got; equal to the dataset's size when complete), and ``patch_maps`` (whether ``top_maps_SNP`` is
recorded).

**Patch maps.** A card shows each top image with the latent's heatmap on it. Without maps the card runs its 16
images through the model again: about a second on a CPU for ViT-B/32, most of a card's time. With them it reads
them: 16 x 49 values per latent for ViT-B/32, 38 MB in float16 for 24,576 latents (the maps of the toy's 384
latents: 0.4 MB). They are what the build saw, in float16 (3 significant digits, the precision of a heatmap);
an index too large for them (ViT-L/14-336's 65,536 latents x 576 patches would take 1.2 GB) leaves them out by
default and its cards run the model. Recording them costs little: a map is read only for an image that enters a
top list, and only the lists that changed are rewritten (``IndexState.merge_top``).

**Several processes and resuming.** The dataset is read in chunks of ``chunk_images``; each process takes every
world-th image of a chunk, then the chunk's partial results are merged over processes (top lists merged, counts
summed) and, when ``--out`` is given, written. Top lists break ties by image position, so the index does not
depend on the number of processes or on where a build was resumed (a test checks both).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine.errors import SAEFormatError, UserInputError, WorkbenchError
from engine.image_sources import FolderImages, ImageSource, parse_source
from engine.report import end_launched_process, print_result
from engine.resident import Workbench

log = logging.getLogger(__name__)

INDEX_FILE, MANIFEST_FILE = "index.safetensors", "manifest.json"
TOY_INDEX_DATASET = "toy:4096@780000"  # rendered scenes from a seed no trainer and no held-out set uses
FORMAT = "concept-steering-workbench feature index v1"
BIN_EDGES = torch.logspace(-4, 4, 65, dtype=torch.float64)  # 8 bins a decade; + underflow and overflow bins
N_BINS = len(BIN_EDGES) + 1
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz", ".npy")
PATCH_MAPS_MAX_BYTES = 256 * 2**20
"""``top_maps_SNP`` is recorded by default when it takes at most this much (d_sae x top_n x patches x 2 bytes)."""
FLOAT16_MAX = torch.finfo(torch.float16).max  # a larger activation is stored as this, not as inf


def portable_path(path: Path) -> str:
    """A path inside the project as relative to its root (the shipped toy index names assets/toy_sae)."""
    from engine.specs import ASSETS

    root = ASSETS.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def project_path(text: str) -> str:
    """The inverse of :func:`portable_path`."""
    from engine.specs import ASSETS

    return text if Path(text).is_absolute() else str(ASSETS.parent / text)


def sae_fingerprint(path: str | Path) -> str:
    """sha256 over an SAE's weight files (a file, or the weight files directly in a directory, sorted by name: not
    those of sub-directories, such as a feature index or checkpoints kept beside the SAE)."""
    path = Path(path)
    files = (
        [path] if path.is_file() else sorted(p for p in path.glob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    )
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


# --- Accumulating: one batch at a time, mergeable -------------------------------------------------------------


@dataclass
class IndexState:
    """The running index (see the module docstring for each tensor)."""

    top_values_SN: torch.Tensor
    top_images_SN: torch.Tensor
    top_patches_SN: torch.Tensor
    fired_tokens_S: torch.Tensor
    fired_images_S: torch.Tensor
    sum_S: torch.Tensor
    histogram_SB: torch.Tensor
    n_images: int = 0
    n_tokens: int = 0
    top_maps_SNP: torch.Tensor | None = None  # None: this index records no patch maps (module docstring)

    @classmethod
    def empty(cls, d_sae: int, top_n: int, n_patches: int = 0) -> IndexState:
        """An index of nothing yet; with ``n_patches``, one that records the top images' patch maps."""
        return cls(
            torch.full((d_sae, top_n), float("-inf")),
            torch.full((d_sae, top_n), -1, dtype=torch.int64),
            torch.full((d_sae, top_n), -1, dtype=torch.int64),
            torch.zeros(d_sae, dtype=torch.int64),
            torch.zeros(d_sae, dtype=torch.int64),
            torch.zeros(d_sae, dtype=torch.float64),
            torch.zeros(d_sae, N_BINS, dtype=torch.int64),
            top_maps_SNP=torch.zeros(d_sae, top_n, n_patches, dtype=torch.float16) if n_patches else None,
        )

    @property
    def top_n(self) -> int:
        return self.top_values_SN.shape[1]

    def add(self, f_BTS: torch.Tensor, images_B: list[int], n_prefix_tokens: int) -> None:
        """Fold in a batch of SAE codes (B images, T tokens, S latents) of the dataset images ``images_B``."""
        f_BTS = f_BTS.float().cpu()
        B, T, S = f_BTS.shape
        score_BS = f_BTS.amax(1)
        patch_value_BS, patch_BS = f_BTS[:, n_prefix_tokens:].max(1)
        patch_BS = torch.where(patch_value_BS > 0, patch_BS, -1)
        fired_BS = score_BS > 0
        ids_BS = torch.tensor(images_B, dtype=torch.int64)[:, None].expand(B, S)
        values_SB = torch.where(fired_BS, score_BS, float("-inf")).T
        images_SB = torch.where(fired_BS, ids_BS, -1).T
        # the batch's own top N per latent first (the same order as merge_top: the result is the same)
        keep_SM = top_order(values_SB, images_SB, min(self.top_n, B))
        candidates_SM = images_SB.gather(1, keep_SM)
        f_BPS = f_BTS[:, n_prefix_tokens:]

        def maps_of(s_K: torch.Tensor, c_K: torch.Tensor) -> torch.Tensor:  # read for the lists' newcomers only
            maps_KP = f_BPS[keep_SM[s_K, c_K], :, s_K]
            return torch.where((candidates_SM[s_K, c_K] >= 0)[:, None], maps_KP, 0.0).clamp(-FLOAT16_MAX, FLOAT16_MAX)

        self.merge_top(
            values_SB.gather(1, keep_SM),
            candidates_SM,
            torch.where(fired_BS, patch_BS, -1).T.gather(1, keep_SM),
            maps_of,
        )
        nonzero_BTS = f_BTS != 0
        self.fired_tokens_S += nonzero_BTS.sum((0, 1))
        self.fired_images_S += nonzero_BTS.any(1).sum(0)
        self.sum_S += f_BTS.sum((0, 1)).double()  # summed in float32 per batch: no (B, T, S) float64 copy
        _, _, latent_K = nonzero_BTS.nonzero(as_tuple=True)
        bins_K = torch.bucketize(f_BTS[nonzero_BTS].abs().double(), BIN_EDGES, right=True)  # [low, high)
        self.histogram_SB += torch.bincount(latent_K * N_BINS + bins_K, minlength=S * N_BINS).view(S, N_BINS)
        self.n_images += B
        self.n_tokens += B * T

    def merge_top(
        self,
        values_SM: torch.Tensor,
        images_SM: torch.Tensor,
        patches_SM: torch.Tensor,
        maps_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Keep the top N of the current lists and the candidates (:func:`top_order`). When this index records patch
        maps, ``maps_of(s_K, c_K)`` gives the maps (K, P) of candidate column ``c_K[k]`` of latent ``s_K[k]``, asked
        only for the candidates that enter a list; and only the lists that changed are rewritten (once the lists
        have filled, a batch changes few of them)."""
        n = self.top_n
        values = torch.cat([self.top_values_SN, values_SM], 1)
        images = torch.cat([self.top_images_SN, images_SM], 1)
        patches = torch.cat([self.top_patches_SN, patches_SM], 1)
        keep_SN = top_order(values, images, n)
        self.top_values_SN, self.top_images_SN, self.top_patches_SN = (
            t.gather(1, keep_SN) for t in (values, images, patches)
        )
        if self.top_maps_SNP is None:
            return
        if maps_of is None:
            raise ValueError("this index records patch maps: merge candidates with theirs")
        rows_R = (keep_SN != torch.arange(n)).any(1).nonzero().flatten()
        keep_RN = keep_SN[rows_R]
        maps_RNP = self.top_maps_SNP[rows_R].gather(
            1, keep_RN.clamp(max=n - 1)[..., None].expand(-1, -1, self.n_patches)
        )
        r_K, n_K = (keep_RN >= n).nonzero(as_tuple=True)
        maps_RNP[r_K, n_K] = maps_of(rows_R[r_K], keep_RN[r_K, n_K] - n).to(torch.float16)
        self.top_maps_SNP[rows_R] = maps_RNP

    def absorb(self, other: IndexState) -> None:
        """Add another part's results (other images) to these."""
        maps = other.top_maps_SNP
        self.merge_top(
            other.top_values_SN,
            other.top_images_SN,
            other.top_patches_SN,
            None if maps is None else (lambda s_K, c_K: maps[s_K, c_K]),
        )
        for name in ("fired_tokens_S", "fired_images_S", "sum_S", "histogram_SB"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.n_images += other.n_images
        self.n_tokens += other.n_tokens

    def tensors(self) -> dict[str, torch.Tensor]:
        names = ("top_values_SN", "top_images_SN", "top_patches_SN", "fired_tokens_S", "fired_images_S", "sum_S")
        maps = {} if self.top_maps_SNP is None else {"top_maps_SNP": self.top_maps_SNP.contiguous()}
        return {
            **{n: getattr(self, n).contiguous() for n in names},
            "histogram_SB": self.histogram_SB.contiguous(),
            **maps,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], n_images: int, n_tokens: int) -> IndexState:
        names = ("top_values_SN", "top_images_SN", "top_patches_SN", "fired_tokens_S", "fired_images_S", "sum_S")
        return cls(
            *(tensors[n] for n in names), tensors["histogram_SB"], n_images, n_tokens, tensors.get("top_maps_SNP")
        )

    @property
    def n_patches(self) -> int:
        """Patches per recorded map (0: no maps recorded)."""
        return 0 if self.top_maps_SNP is None else self.top_maps_SNP.shape[2]


def top_order(values_SM: torch.Tensor, images_SM: torch.Tensor, n: int) -> torch.Tensor:
    """Per row, the columns of the ``n`` best candidates, (S, n): by value, descending, ties to the earlier image
    (an empty slot, image -1, last), so that an index does not depend on the order in which images arrive."""
    by_image = torch.where(images_SM < 0, torch.iinfo(torch.int64).max, images_SM).argsort(dim=1, stable=True)
    by_value = values_SM.gather(1, by_image).argsort(dim=1, descending=True, stable=True)[:, :n]
    return by_image.gather(1, by_value)


def gathered(state: IndexState, accelerator) -> IndexState:
    """Every process's part merged, on every process."""
    if accelerator is None or accelerator.num_processes == 1:
        return state
    device = accelerator.device
    merged = IndexState.empty(*state.top_values_SN.shape, state.n_patches)
    tensors = {k: v.to(device) for k, v in state.tensors().items()}
    counts = torch.tensor([state.n_images, state.n_tokens], dtype=torch.int64, device=device)
    parts = [accelerator.gather(tensors[k][None]).cpu() for k in tensors]  # (world, ...) each
    all_counts = accelerator.gather(counts[None]).cpu()
    for w in range(accelerator.num_processes):
        merged.absorb(IndexState.from_tensors(
            {k: p[w] for k, p in zip(tensors, parts)}, int(all_counts[w, 0]), int(all_counts[w, 1])
        ))  # fmt: skip
    return merged


# --- Building ------------------------------------------------------------------------------------------------


def build_index(
    workbench: Workbench,
    source: ImageSource,
    out_dir: str | Path | None = None,
    top_n: int = 16,
    batch_images: int = 64,
    chunk_images: int = 1024,
    resume: bool = False,
    model_text: str = "",
    command: str = "",
    accelerator=None,
    stop_after_chunks: int | None = None,
    patch_maps: bool | None = None,
) -> tuple[IndexState, dict]:
    """Stream ``source`` through the workbench's model and SAE (engine.resident's non-caching ``stream_codes``)
    and accumulate the index; written to ``out_dir`` after every chunk when given. ``patch_maps``: record the top
    images' patch maps (None: when they fit :data:`PATCH_MAPS_MAX_BYTES`; a resumed build keeps its choice).
    Returns (state, manifest)."""
    if not 1 <= top_n <= 1024:
        raise UserInputError(f"top_n must be within 1 .. 1024; got {top_n}")
    grid = workbench.backend.grid
    n_patches = grid[0] * grid[1]
    out_dir = Path(out_dir) if out_dir is not None else None
    start = time.time()
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    manifest = {
        "format": FORMAT,
        "model": model_text or workbench.model_spec.display_name,
        "sae": {
            "path": portable_path(workbench.resident_sae.path),
            "fingerprint": sae_fingerprint(workbench.resident_sae.path),
            "site": workbench.site,
            "d_sae": workbench.d_sae,
        },
        "dataset": source.describe(),
        "dataset_images": len(source),
        "top_n": top_n,
        "histogram_bin_edges": "logspace(-4, 4, 65): 8 bins a decade, plus underflow and overflow",
        "processes": world,
        "command": command,
    }
    resuming = resume and out_dir is not None and (out_dir / MANIFEST_FILE).is_file()
    saved = json.loads((out_dir / MANIFEST_FILE).read_text()) if resuming else {}
    if patch_maps is None:
        fits = workbench.d_sae * top_n * n_patches * 2 <= PATCH_MAPS_MAX_BYTES
        patch_maps = saved.get("patch_maps", False) if resuming else fits
    manifest["patch_maps"] = bool(patch_maps)
    state = IndexState.empty(workbench.d_sae, top_n, n_patches if patch_maps else 0)
    unreadable, images_done = [], 0
    if resuming:
        saved.setdefault("patch_maps", False)  # an index from before patch maps has none
        differ = [k for k in ("model", "sae", "dataset", "top_n", "patch_maps") if saved.get(k) != manifest[k]]
        if differ:
            raise UserInputError(f"cannot resume the index in {out_dir}: built with another {', '.join(differ)}")
        tensors = load_file(str(out_dir / INDEX_FILE))  # the one file that is written atomically: the truth
        images, tokens, images_done = tensors["progress"].tolist()
        state = IndexState.from_tensors(tensors, images, tokens)
        unreadable = tensors["unreadable_U"].tolist()
        log.info("resuming the index at image %d of %d", images_done, len(source))
    chunks = 0
    while images_done < len(source):
        chunk = list(range(images_done, min(images_done + chunk_images, len(source))))
        part, part_unreadable = index_part(workbench, source, chunk[rank::world], top_n, batch_images, state.n_patches)
        state.absorb(gathered(part, accelerator))
        unreadable += all_unreadable(part_unreadable, len(source), accelerator)
        images_done = chunk[-1] + 1
        chunks += 1
        log.info("indexed %d / %d images (%.0fs)", images_done, len(source), time.time() - start)
        done = images_done == len(source)
        if out_dir is not None:
            write(out_dir, state, sorted(unreadable), manifest, images_done, time.time() - start, accelerator)
        if stop_after_chunks is not None and chunks >= stop_after_chunks and not done:
            break
    manifest.update(counts(state, unreadable), images_done=images_done, seconds=round(time.time() - start, 1))
    return state, manifest


def index_part(
    workbench: Workbench, source: ImageSource, positions: list[int], top_n: int, batch_images: int, n_patches: int = 0
) -> tuple[IndexState, list[int]]:
    """This process's images of a chunk, indexed from scratch (with patch maps of ``n_patches`` when non-zero)."""
    part, unreadable = IndexState.empty(workbench.d_sae, top_n, n_patches), []
    for start in range(0, len(positions), batch_images):
        batch = positions[start : start + batch_images]
        images = [source.load(i) for i in batch]
        unreadable += [i for i, im in zip(batch, images) if im is None]
        kept = [(i, im) for i, im in zip(batch, images) if im is not None]
        if not kept:
            continue
        pixels = workbench.pixels([im for _, im in kept])
        for _, f_BTS, _ in workbench.stream_codes([pixels]):
            part.add(f_BTS, [i for i, _ in kept], workbench.backend.n_prefix_tokens)
    return part, unreadable


def all_unreadable(mine: list[int], n_images: int, accelerator) -> list[int]:
    if accelerator is None or accelerator.num_processes == 1:
        return mine
    mask = torch.zeros(n_images, device=accelerator.device)
    mask[mine] = 1
    return (accelerator.reduce(mask, reduction="sum").cpu() > 0).nonzero().flatten().tolist()


def counts(state: IndexState, unreadable: list[int]) -> dict:
    return {
        "counts": {
            "images": state.n_images,
            "tokens": state.n_tokens,
            "unreadable": len(unreadable),
            "dead_latents": int((state.fired_tokens_S == 0).sum()),
        }
    }


def write(out_dir: Path, state, unreadable, manifest, images_done, seconds, accelerator) -> None:
    if accelerator is not None and not accelerator.is_main_process:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = torch.tensor([state.n_images, state.n_tokens, images_done], dtype=torch.int64)
    tensors = {**state.tensors(), "unreadable_U": torch.tensor(unreadable, dtype=torch.int64), "progress": progress}
    save_file(tensors, str(out_dir / (INDEX_FILE + ".tmp")))
    (out_dir / (INDEX_FILE + ".tmp")).replace(out_dir / INDEX_FILE)  # a build stopped mid-write keeps the old one
    full = {**manifest, **counts(state, unreadable), "images_done": images_done, "seconds": round(seconds, 1)}
    (out_dir / MANIFEST_FILE).write_text(json.dumps(full, indent=2))


# --- Reading -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentStats:
    """One latent as the index saw it: ``top`` holds (dataset position, activation, patch or -1)."""

    latent: int
    frequency: float  # share of tokens it fires on
    image_frequency: float  # share of images it fires on somewhere
    mean: float  # mean non-zero activation
    top: tuple[tuple[int, float, int], ...]
    histogram: tuple[int, ...]  # counts per bin of |activation|, bin_edges() apart
    quantiles: dict[str, float]  # "p50", "p90", "p99" of the non-zero activations (to within a bin)

    @property
    def dead(self) -> bool:
        return self.frequency == 0


def bin_edges() -> list[float]:
    """The histogram's bins as [low, high) pairs flattened: bin b spans edges[b] .. edges[b + 1]."""
    return [0.0, *BIN_EDGES.tolist(), float("inf")]


def histogram_quantile(counts_B: torch.Tensor, q: float) -> float:
    """The ``q`` quantile read from a histogram over BIN_EDGES: the geometric middle of the bin it falls in."""
    total = int(counts_B.sum())
    if total == 0:
        return 0.0
    b = int(torch.searchsorted(counts_B.cumsum(0), torch.tensor(q * total, dtype=torch.float64).ceil().long()))
    edges = bin_edges()
    low, high = max(edges[b], float(BIN_EDGES[0]) / 10), min(edges[b + 1], float(BIN_EDGES[-1]) * 10)
    return float((low * high) ** 0.5)


class FeatureIndex:
    """An index read from disk (the format of the module docstring)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST_FILE
        if not manifest_path.is_file() or not (self.directory / INDEX_FILE).is_file():
            raise UserInputError(f"{self.directory} is not a feature index (no {MANIFEST_FILE} and {INDEX_FILE})")
        self.manifest = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise SAEFormatError(f"{manifest_path}: unknown index format {self.manifest.get('format')!r}")
        tensors = load_file(str(self.directory / INDEX_FILE))
        self.state = IndexState.from_tensors(tensors, *tensors["progress"].tolist()[:2])
        self.unreadable = tensors["unreadable_U"].tolist()
        self.complete = int(tensors["progress"][2]) == self.manifest["dataset_images"]

    @property
    def d_sae(self) -> int:
        return self.state.top_values_SN.shape[0]

    @property
    def fingerprint(self) -> str:
        return self.manifest["sae"]["fingerprint"]

    @functools.cached_property
    def frequency_S(self) -> torch.Tensor:
        return self.state.fired_tokens_S.double() / max(self.state.n_tokens, 1)

    @functools.cached_property
    def mean_S(self) -> torch.Tensor:
        return self.state.sum_S / self.state.fired_tokens_S.clamp(min=1)

    def dead_latents(self) -> list[int]:
        return (self.state.fired_tokens_S == 0).nonzero().flatten().tolist()

    def stats(self, latent: int) -> LatentStats:
        if not 0 <= latent < self.d_sae:
            raise UserInputError(f"unknown latent id {latent!r}; valid: 0 .. {self.d_sae - 1}")
        s = self.state
        top = tuple(
            (int(i), float(v), int(p))
            for v, i, p in zip(s.top_values_SN[latent], s.top_images_SN[latent], s.top_patches_SN[latent])
            if i >= 0
        )
        counts_B = s.histogram_SB[latent]
        return LatentStats(
            latent,
            float(self.frequency_S[latent]),
            float(s.fired_images_S[latent]) / max(s.n_images, 1),
            float(self.mean_S[latent]),
            top,
            tuple(counts_B.tolist()),
            {f"p{round(q * 100)}": histogram_quantile(counts_B, q) for q in (0.5, 0.9, 0.99)},
        )

    def top_maps(self, latent: int) -> torch.Tensor | None:
        """The patch maps of ``stats(latent).top``, in its order, (n, P) in float32; None when the index has none."""
        maps = self.state.top_maps_SNP
        if maps is None:
            return None
        return maps[latent][self.state.top_images_SN[latent] >= 0].float()

    def source(self, allowed=None) -> ImageSource:
        """The dataset the index was built on: toy scenes re-rendered from their seeds, or the folder (which must
        lie in an allowed directory when ``allowed`` is given)."""
        dataset = self.manifest["dataset"]
        if dataset.startswith("toy:"):
            return parse_source(dataset)
        if allowed is not None:
            allowed.check(dataset)
        return FolderImages(dataset)


@functools.cache
def _fingerprint_of(path: str, mtime: float) -> str:
    return sae_fingerprint(path)


def find_index(workbench: Workbench, directories: tuple[Path, ...] = ()) -> FeatureIndex | None:
    """The index built for this workbench's SAE, if one is at hand: among ``directories``, the shipped toy index,
    and ``feature_index/`` beside the SAE; only an index whose SAE fingerprint matches (None otherwise)."""
    from engine.specs import ASSETS

    sae_path = workbench.resident_sae.path
    beside = (sae_path if sae_path.is_dir() else sae_path.parent) / "feature_index"
    wanted = _fingerprint_of(str(sae_path), sae_path.stat().st_mtime)
    for directory in (*directories, ASSETS / "toy_index", beside):
        manifest = Path(directory) / MANIFEST_FILE
        if manifest.is_file() and json.loads(manifest.read_text())["sae"]["fingerprint"] == wanted:
            return load_index(str(directory), manifest.stat().st_mtime)
    return None


@functools.lru_cache(maxsize=8)
def load_index(directory: str, mtime: float = 0.0) -> FeatureIndex:
    """A FeatureIndex, cached by directory and modification time."""
    return FeatureIndex(directory)


# --- Command line --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or resume) an index")
    build.add_argument("--model", required=True, help="toy | open_clip:NAME@TAG | open_clip:local-dir:/p | hf:ID")
    build.add_argument("--sae", required=True, help="the SAE (any supported format), optionally @blocks.N.resid_post")
    build.add_argument("--data", required=True, help="a folder of images (recursive), or toy:N[@SEED]")
    build.add_argument("--out", required=True, help="directory for index.safetensors and manifest.json")
    build.add_argument("--top-n", type=int, default=16, help="top-activating images kept per latent")
    build.add_argument("--batch-images", type=int, default=64)
    build.add_argument("--chunk-images", type=int, default=1024, help="images between two saves (resume points)")
    build.add_argument("--resume", action="store_true", help="continue a build that stopped")
    build.add_argument("--device", help="cpu or cuda (default: what accelerate chooses)")
    build.add_argument("--dtype", default="float32", help="model and SAE precision")
    build.add_argument(
        "--patch-maps", choices=("auto", "yes", "no"), default="auto",
        help="record the top images' patch maps for the cards (auto: when they fit in 256 MB)",
    )  # fmt: skip
    export = commands.add_parser("export", help="write latent cards as one HTML page or as JSON")
    export.add_argument("--index", required=True, help="an index directory")
    export.add_argument("--latents", required=True, help="comma-separated latent ids, e.g. 3,17,40")
    export.add_argument("--out", required=True, help="a .html or .json file")
    export.add_argument("--model", help="the model (default: the one the manifest names)")
    export.add_argument("--sae", help="the SAE (default: the one the manifest names)")
    export.add_argument("--examples", type=int, default=16, help="top images per card")
    export.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    command = "python -m engine.index " + shlex.join(sys.argv[1:] if argv is None else argv)
    if args.command == "build":
        run_build(args, command)
    else:
        run_export(args)


def cli_workbench(model_text: str, sae_text: str, device: str | None, dtype: str = "float32") -> Workbench:
    """Model and SAE named on the command line: the operator's own paths are allowed."""
    from engine.registry import parse_model, parse_sae
    from engine.resident import load_workbench
    from engine.sources import AllowedDirs, local_model_paths

    model, sae = parse_model(model_text), parse_sae(sae_text)
    extra = [*local_model_paths(model), *([] if sae.path.startswith("hf:") else [sae.path])]
    return load_workbench(model, sae, device, dtype=dtype, allowed=AllowedDirs.default(extra))


def run_build(args: argparse.Namespace, command: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == "cpu")
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    torch.manual_seed(0)  # a model with random weights (open_clip:NAME@random) is then one model on every process
    workbench = cli_workbench(args.model, args.sae, args.device or str(accelerator.device), args.dtype)
    _, manifest = build_index(
        workbench,
        parse_source(args.data),
        args.out,
        args.top_n,
        args.batch_images,
        args.chunk_images,
        args.resume,
        args.model,
        command,
        accelerator,
        patch_maps={"auto": None, "yes": True, "no": False}[args.patch_maps],
    )
    if accelerator.is_main_process:
        print_result({**manifest["counts"], "seconds": manifest["seconds"]}, as_json=True)
    end_launched_process(accelerator.num_processes)


def parse_latents(text: str, d_sae: int) -> list[int]:
    try:
        latents = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserInputError(f"latents must be comma-separated whole numbers 0 .. {d_sae - 1}; got {text!r}") from None
    if not latents or not all(0 <= i < d_sae for i in latents):
        raise UserInputError(f"latents must be within 0 .. {d_sae - 1}; got {text!r}")
    return latents


def run_export(args: argparse.Namespace) -> None:
    from engine import cards

    index = FeatureIndex(args.index)
    workbench = cli_workbench(
        args.model or index.manifest["model"], args.sae or project_path(index.manifest["sae"]["path"]), args.device
    )
    if sae_fingerprint(workbench.resident_sae.path) != index.fingerprint:
        raise UserInputError("the SAE's weights differ from those the index was built with; give --sae of that SAE")
    latents = parse_latents(args.latents, index.d_sae)
    built = [cards.latent_card(workbench, index, i, n_examples=args.examples) for i in latents]
    out = Path(args.out)
    if out.suffix not in (".html", ".json"):
        raise UserInputError(f"--out must end in .html or .json; got {out.name}")
    text = (
        cards.cards_html(built, f"Latent cards: {index.manifest['model']}")
        if out.suffix == ".html"
        else cards.cards_json(built)
    )
    out.write_text(text, encoding="utf-8")
    log.info("wrote %d cards to %s", len(built), out)


if __name__ == "__main__":
    try:
        main()
    except (WorkbenchError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None  # the message says what to fix; no traceback
