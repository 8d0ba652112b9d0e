"""Speed and memory of the engine's fast paths, against the naive way and against nnsight.

    python -m engine.bench            # a readable report
    python -m engine.bench --json     # one JSON object on stdout

Every ratio is the median over repeated runs in one process with the two sides interleaved (A, B, A, B, ...),
so the machine's noise cancels. The main model is open_clip ViT-B/32 with random weights (the real
architecture; no download) steered at ``blocks.10.resid_post`` with a random TopK SAE of 24,576 latents
(k = 32); the toy model is measured too (with at least ``TOY_REPEATS`` pairs per ratio). Each timed request
uses a fresh image, so the engine pays for its prefix like a user's first request does, unless the figure is
about the cache.

* ``sweep_speedup_vs_naive``: a 16-strength sweep of one latent, ours against 16 full forwards each with a
  steering hook (the way without prefix caching or batching);
* ``sweep_speedup_vs_nnsight``: the same against the loop a user writes with nnsight (one trace per strength);
* ``sweep_vs_ideal``: ours against the bare minimum written without engine code (one prefix forward, one
  SAE encode, one batched suffix pass);
* ``attribution_vs_forward``: a full attribution of every latent against one forward with the SAE encode;
  ``attribution_ideal_vs_forward`` is the same for the bare minimum of an attribution written without engine
  code (the forward, the suffix's backward, the active latents' scores): the floor under the first;
* ``cached_vs_first``: a second sweep on the same image against the first;
* ``cold_start_s``: process start to the app answering an ``attribute`` request on the toy default;
* ``rss_mb_after_200_images``: resident memory after 200 distinct images through attribute and sweep;
* ``patching_sweep``: a full per-block x per-token patching sweep (every block, every token alone and all
  tokens at once, one direction) of one image into another, ours (one batched pass per block from the stored
  residual streams, engine.patching) against one hooked full forward per patch. On the toy model the naive
  side runs every patch; on ViT-B/32 it runs ``NAIVE_PATCH_SAMPLE`` patches and is scaled to the full count
  (``naive_extrapolated``: true);
* ``explain`` (when the toy LLaVA is built): seconds per explanation on the toy VLM (the steered generation and
  its three controls, uncached), ours (one batched ``generate`` of four rows, each with its own edit in one
  hook) against four ``generate`` calls with a hook each (``speedup``);
* ``sae_train_tokens_per_s``: engine.train_sae's training loop end to end (images read, the model's prefix, the
  SAE's forward, backward and Adam step) on ViT-B/32 (random weights, 24,576 latents, k = 32, noise images) and
  on the toy model (its SAE's size, rendered scenes); ``index_images_per_s``: engine.index's build, the same way.
  ``latent_card_ms``: one latent card (its 16 top images read, their heatmaps, the statistics) on ViT-B/32 from
  an index of noise images, p50 over latents, read from the index's patch maps (``patch_maps``) and with them
  left out, the card running the model on its images (``model_run``).
  ``python -m engine.bench --only dataset_scale`` measures these three alone (``--only explain`` the next one);
* ``vit_l14_336`` (on a GPU in every run; on a CPU only with ``--only vit_l14_336``, minutes): LLaVA's vision
  tower (ViT-L/14 at 336 px, random weights) at ``blocks.22.resid_post`` with a random TopK SAE of 65,536 latents
  (k = 64): ``sweep_vs_ideal`` and ``attribution_vs_forward`` with absolute milliseconds and peak GPU memory, in
  float32 and bfloat16 on a GPU;
* ``end_to_end`` (``--only endpoints`` alone): what a user waits for, each endpoint's round trip through the
  served app against Gradio's floor (engine.bench_endpoints).
* ``targets``: every target of :data:`TARGETS` that the run measured, with its value (a table's worst entry),
  its limit, whether it is met and a table's entries that miss it: whether they all held in one run, at a glance.

Every timer reads :func:`clock`, which waits for queued CUDA kernels first; ``peak_gpu_mb`` is torch's peak
allocation on the GPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine import attribution, bench_endpoints, cards, index, patching, steering, train_sae
from engine.errors import UnknownChoiceError
from engine.image_sources import FolderImages, ImageSource, ToyImages
from engine.report import print_result
from engine.resident import Workbench, load_workbench
from engine.sae import SAE, SAEConfig
from engine.sources import AllowedDirs
from engine.specs import TOY_VLM_DIR, ModelSpec, SAESpec

log = logging.getLogger(__name__)
PARTS = ("all", "dataset_scale", "explain", "endpoints", "vit_l14_336")
STRENGTHS = np.linspace(-1, 3, 16).tolist()
TOY_REPEATS = 31
"""The toy's ratios are medians of at least this many interleaved pairs: each call takes milliseconds, so five
pairs (ViT-B/32's usual ``--repeats``) let one stall of this shared machine move a ratio by a third."""
LABELS = ["dog", "cat", "car", "tree", "house", "person", "bird", "boat"]
TARGETS = (
    # (where in the result, its keys joined by dots; "<=" or ">="; limit); a figure that is a table (one ratio per
    # endpoint) is judged by its worst entry
    ("sweep_speedup_vs_naive", ">=", 4),
    ("sweep_speedup_vs_nnsight", ">=", 4),
    ("sweep_vs_ideal", "<=", 1.25),
    ("attribution_vs_forward", "<=", 2.0),
    ("rss_mb_after_200_images", "<=", 2500),
    ("cold_start_s", "<=", 10),
    ("toy.sweep_speedup_vs_naive", ">=", 4),
    ("toy.sweep_speedup_vs_nnsight", ">=", 4),
    ("toy.sweep_vs_ideal", "<=", 1.25),
    ("toy.attribution_vs_forward", "<=", 1.5),
    ("end_to_end.toy.tls_once_vs_floor", "<=", 1.5),
    ("end_to_end.vit_b32.tls_once_vs_engine_plus_floor", "<=", 1.2),
    ("vit_l14_336.float32.sweep_vs_ideal", "<=", 1.25),
    ("vit_l14_336.bfloat16.sweep_vs_ideal", "<=", 1.25),
    ("vit_l14_336.bfloat16.sweep_ms", "<=", 10),
)
"""The project's speed targets (README's Speed section; issue 14 for the toy's ratios, the end-to-end ones and
ViT-L/14-336 on a GPU), judged by :func:`targets` in every run.

The end-to-end targets are judged through gradio_client with its TLS set-up done once (``tls_once_*``,
engine.bench_endpoints). The same tables through gradio_client's defaults (``vs_floor``,
``vs_engine_plus_floor``) are reported beside them, not judged: by default gradio_client builds a new HTTP client,
certificate bundle and all, for every request and every uploaded file (35 to 47 ms of the client's CPU each on
this machine), so a call with an image pays that set-up once more than the trivial floor does, before the
request reaches the server; what that ratio adds to the judged one is the client's, and no server can take it
away (README, "What a user waits for")."""


def targets(result: dict) -> dict:
    """Each of :data:`TARGETS` that the result holds: its value (a table's worst entry), the limit, whether it is
    met, and a table's entries that miss it. One look says whether every target held in this run.

    >>> targets({"toy": {"sweep_vs_ideal": 1.3}, "end_to_end": {"toy": {"tls_once_vs_floor": {"a": 1.0, "b": 1.9}}}})
    ... # doctest: +NORMALIZE_WHITESPACE
    {'toy.sweep_vs_ideal': {'value': 1.3, 'limit': '<= 1.25', 'met': False},
     'end_to_end.toy.tls_once_vs_floor': {'value': 1.9, 'limit': '<= 1.5', 'met': False, 'misses': {'b': 1.9}}}
    """
    out = {}
    for name, sense, limit in TARGETS:
        value = result
        for key in name.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue
        shown = f"{sense} {limit}"
        if isinstance(value, dict):
            worst = (max if sense == "<=" else min)(value.values())
            misses = {k: v for k, v in value.items() if not meets(v, sense, limit)}
            out[name] = {"value": worst, "limit": shown, "met": not misses, "misses": misses}
        else:
            out[name] = {"value": value, "limit": shown, "met": meets(value, sense, limit)}
    return out


def meets(value: float, sense: str, limit: float) -> bool:
    return value <= limit if sense == "<=" else value >= limit


def random_sae(d_in: int, d_sae: int, k: int, site: str, seed: int = 0) -> SAE:
    generator = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in, d_sae, "topk", site, k=k, model_name="random"))
    with torch.no_grad():
        W_dec = torch.randn(d_sae, d_in, generator=generator)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return sae


def vit_b32_workbench(directory: Path, device: torch.device, dtype: str = "float32") -> Workbench:
    site = "blocks.10.resid_post"
    random_sae(768, 24_576, 32, site).save(directory)
    allowed = AllowedDirs.default([directory])
    spec = ModelSpec("open_clip", "ViT-B-32")
    return load_workbench(spec, SAESpec(str(directory)), str(device), dtype=dtype, allowed=allowed)


def vit_l14_336_workbench(directory: Path, device: torch.device, dtype: str = "float32") -> Workbench:
    """LLaVA's vision tower (open_clip ViT-L/14 at 336 px, random weights) steered at ``blocks.22.resid_post``
    (where LLaVA reads) with a random TopK SAE of 65,536 latents (k = 64)."""
    site = "blocks.22.resid_post"
    random_sae(1024, 65_536, 64, site).save(directory)
    allowed = AllowedDirs.default([directory])
    spec = ModelSpec("open_clip", "ViT-L-14-336")
    return load_workbench(spec, SAESpec(str(directory)), str(device), dtype=dtype, allowed=allowed)


def peak_gpu_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None


def large_model(device: torch.device, repeats: int, dtypes: tuple[str, ...]) -> dict:
    """``sweep_vs_ideal`` and ``attribution_vs_forward`` with absolute milliseconds (and peak GPU memory) on
    ViT-L/14-336 with 65,536 latents, per dtype. The naive and nnsight loops are left out: 16 full forwards of
    this model per request are what nobody should wait for, and on a CPU they would take minutes."""
    out = {}
    for dtype in dtypes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with tempfile.TemporaryDirectory() as tmp:
            workbench = vit_l14_336_workbench(Path(tmp), device, dtype)
            images, latent = Images(336), 7
            ratio, t_ideal, t_ours = interleaved_ratio(
                sweep_ideal(workbench, images, latent), sweep_ours(workbench, images, latent), repeats
            )
            a_ratio, t_forward, t_attr = interleaved_ratio(
                forward_with_sae(workbench, images), attribute_ours(workbench, images), repeats
            )
            out[dtype] = {
                "sweep_vs_ideal": round(ratio, 3),
                "sweep_ms": round(t_ours * 1000, 1),
                "sweep_ideal_ms": round(t_ideal * 1000, 1),
                "attribution_vs_forward": round(a_ratio, 3),
                "attribution_ms": round(t_attr * 1000, 1),
                "forward_ms": round(t_forward * 1000, 1),
                "peak_gpu_mb": peak_gpu_mb(device),
            }
            del workbench
    return out


class Images:
    """A stream of distinct random images (so that no request hits the prefix cache by accident)."""

    def __init__(self, size: int, seed: int = 0):
        self.rng, self.size = np.random.default_rng(seed), size

    def __call__(self) -> Image.Image:
        return Image.fromarray(self.rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8))


def clock() -> float:
    """Seconds, read after every queued CUDA kernel has finished: GPU work is asynchronous, so without the sync
    a timer reads when the launches returned, not when the results exist."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    return time.perf_counter()


def interleaved_ratio(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median of time(b) / time(a) over interleaved runs, with the median times (a, b) in seconds."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        for fn, times in ((a, ta), (b, tb)):
            start = clock()
            fn()
            times.append(clock() - start)
    ratios = [y / x for x, y in zip(ta, tb, strict=True)]
    return statistics.median(ratios), statistics.median(ta), statistics.median(tb)


def sweep_ours(workbench: Workbench, images: Images, latent: int):
    return lambda: steering.sweep(workbench, images(), LABELS, latent, STRENGTHS, baseline=False)


def sweep_naive(workbench: Workbench, images: Images, latent: int):
    """16 full forwards, each with a hook that encodes the site with the SAE and adds the edit."""
    text_emb_LE = workbench.text_embeddings(LABELS)
    W_dec_D = workbench.sae.W_dec[latent]

    def run():
        pixels = workbench.pixels([images()])
        out = []
        for s in STRENGTHS:

            def hook(module, inputs, output, s=s):
                f_BT = workbench.sae.encode(output)[..., latent]
                return output + (s - 1) * f_BT.unsqueeze(-1) * W_dec_D

            with torch.no_grad(), workbench.model.hooked([(workbench.backend.site_module(workbench.site), hook)]):
                out.append(workbench.backend.encode_image(pixels).float() @ text_emb_LE.T)
        return out

    return run


def sweep_nnsight(workbench: Workbench, images: Images, latent: int):
    """What a user writes with nnsight: one trace per strength, the edit set on the block's output."""
    from nnsight import NNsight

    visual = NNsight(workbench.backend.visual)
    block = visual.transformer.resblocks[workbench.backend.block_index(workbench.site)]
    sae, text_emb_LE = workbench.sae, workbench.text_embeddings(LABELS)

    def run():
        pixels = workbench.pixels([images()])
        out = []
        for s in STRENGTHS:
            with torch.no_grad(), workbench.lock, visual.trace(pixels):
                acts = block.output
                f = sae.encode(acts)[..., latent]
                block.output = acts + (s - 1) * f.unsqueeze(-1) * sae.W_dec[latent]
                emb = visual.output.save()
            out.append(emb.float() @ text_emb_LE.T)
        return out

    return run


def sweep_ideal(workbench: Workbench, images: Images, latent: int):
    """The bare minimum: one prefix forward, one SAE encode, one batched suffix pass."""
    text_emb_LE = workbench.text_embeddings(LABELS)
    strengths_N = torch.tensor(STRENGTHS, dtype=workbench.dtype, device=workbench.device).view(-1, 1, 1)
    backend, sae = workbench.backend, workbench.sae

    def run():
        with torch.no_grad():
            acts_1TD = backend.prefix(workbench.pixels([images()]), workbench.site)
            f_T = sae.encode(acts_1TD)[0, :, latent]
            acts_NTD = acts_1TD + (strengths_N - 1) * f_T.view(1, -1, 1) * sae.W_dec[latent]
            return backend.suffix(acts_NTD, workbench.site).float() @ text_emb_LE.T

    return run


def attribute_ours(workbench: Workbench, images: Images):
    return lambda: attribution.attribute(workbench, images(), LABELS)


def forward_with_sae(workbench: Workbench, images: Images):
    text_emb_LE = workbench.text_embeddings(LABELS)

    def run():
        with torch.no_grad():
            acts = workbench.backend.prefix(workbench.pixels([images()]), workbench.site)
            workbench.sae.encode(acts)
            return workbench.backend.suffix(acts, workbench.site).float() @ text_emb_LE.T

    return run


def attribution_ideal(workbench: Workbench, images: Images):
    """The bare minimum of an attribution, written without engine code: one prefix forward, one SAE encode, the
    suffix with its backward for the logit difference's gradient at the site, and each active latent's score
    f * (W_dec . grad) read at its k active entries per token. The floor under ``attribution_vs_forward``."""
    text_emb_LE = workbench.text_embeddings(LABELS)
    backend, sae, site = workbench.backend, workbench.sae, workbench.site

    def run():
        with torch.no_grad():
            acts_1TD = backend.prefix(workbench.pixels([images()]), site)
            values_TK, latents_TK = sae.encode(acts_1TD)[0].topk(sae.config.k, dim=-1)
        x_1TD = acts_1TD.requires_grad_(True)
        with torch.enable_grad():
            image_emb_1E = backend.suffix(x_1TD, site).float()
            logits_L = backend.logit_scale * (image_emb_1E / image_emb_1E.norm())[0] @ text_emb_LE.T
            target = int(logits_L.argmax())
            others_L = logits_L.detach().clone()
            others_L[target] = float("-inf")
            (grad_1TD,) = torch.autograd.grad(logits_L[target] - logits_L[int(others_L.argmax())], x_1TD)
        return values_TK * (sae.W_dec[latents_TK] @ grad_1TD[0].unsqueeze(-1)).squeeze(-1)

    return run


def same_image_sweeps(workbench: Workbench, images: Images, latent: int):
    """(first, second) request on one image, for the cache ratio; each pair uses a new image."""
    pending: list[Image.Image] = []

    def first():
        pending.append(images())
        steering.sweep(workbench, pending[-1], LABELS, latent, STRENGTHS)

    def second():
        steering.sweep(workbench, pending[-1], LABELS, latent, STRENGTHS)

    return first, second


def cold_start_seconds() -> float:
    """Start ``python app.py`` and time until it answers an ``attribute`` request."""
    from gradio_client import Client, handle_file

    port = bench_endpoints.free_port()
    root = Path(__file__).resolve().parent.parent
    example = sorted((root / "assets" / "examples").glob("*.png"))[0]
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port)], cwd=root, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while time.perf_counter() - start < 120:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
                client.predict(handle_file(str(example)), "circle, square", "a {}", "", "logit_difference", 3,
                               api_name="/attribute")  # fmt: skip
                return time.perf_counter() - start
            except Exception:
                time.sleep(0.2)
        raise TimeoutError("the app did not answer within 120 s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def memory_after_images(workbench: Workbench, images: Images, latent: int, n: int) -> list[float]:
    """RSS after each quarter of ``n`` distinct images through attribute and sweep."""
    marks = []
    for i in range(n):
        image = images()
        attribution.attribute(workbench, image, LABELS)
        steering.sweep(workbench, image, LABELS, latent, STRENGTHS)
        if (i + 1) % (n // 4) == 0:
            marks.append(round(rss_mb()))
    return marks


def speed_ratios(workbench: Workbench, images: Images, latent: int, repeats: int) -> dict:
    """The interleaved ratios of the issue, for one workbench."""
    out: dict = {}
    ratio, t_ours, t_naive = interleaved_ratio(
        sweep_ours(workbench, images, latent), sweep_naive(workbench, images, latent), repeats
    )
    out["sweep_speedup_vs_naive"] = round(ratio, 2)
    out["sweep_seconds_ours"], out["sweep_seconds_naive"] = round(t_ours, 4), round(t_naive, 4)
    ratio, _, t_nnsight = interleaved_ratio(
        sweep_ours(workbench, images, latent), sweep_nnsight(workbench, images, latent), repeats
    )
    out["sweep_speedup_vs_nnsight"] = round(ratio, 2)
    out["sweep_seconds_nnsight"] = round(t_nnsight, 4)
    ratio, _, _ = interleaved_ratio(
        sweep_ideal(workbench, images, latent), sweep_ours(workbench, images, latent), repeats
    )
    out["sweep_vs_ideal"] = round(ratio, 3)
    ratio, _, t_attr = interleaved_ratio(
        forward_with_sae(workbench, images), attribute_ours(workbench, images), repeats
    )
    out["attribution_vs_forward"] = round(ratio, 3)
    out["attribution_seconds"] = round(t_attr, 4)
    ratio, _, _ = interleaved_ratio(forward_with_sae(workbench, images), attribution_ideal(workbench, images), repeats)
    out["attribution_ideal_vs_forward"] = round(ratio, 3)
    first, second = same_image_sweeps(workbench, images, latent)
    ratio, _, _ = interleaved_ratio(first, second, repeats)
    out["cached_vs_first"] = round(ratio, 3)
    return out


NAIVE_PATCH_SAMPLE = 24


def patching_sweep(workbench: Workbench, images: Images, naive_sample: int | None = None) -> dict:
    """Seconds of a per-block x per-token patching sweep, batched (ours) against one hooked forward per patch."""
    backend = workbench.backend
    text_emb_LE = workbench.text_embeddings(LABELS)
    source_image, target_image = images(), images()
    with workbench.lock:
        start = clock()
        source = patching.run(backend, workbench.pixels([source_image]), text_emb_LE, workbench.dtype)
        target = patching.run(backend, workbench.pixels([target_image]), text_emb_LE, workbench.dtype)
        patching.patch_grid(backend, source, target, text_emb_LE, 0, dtype=workbench.dtype)
        ours = clock() - start
    n_tokens = source.resid_LTD.shape[1]
    patches = [(block, token) for block in range(backend.n_blocks) for token in [None, *range(n_tokens)]]
    sample = patches if naive_sample is None else patches[:: max(1, len(patches) // naive_sample)][:naive_sample]
    pixels = workbench.pixels([target_image])
    start = clock()
    for block, token in sample:

        def write(module, inputs, output, block=block, token=token):
            patched = output.clone()
            if token is None:
                patched[0] = source.resid_LTD[block + 1]
            else:
                patched[0, token] = source.resid_LTD[block + 1, token]
            return patched

        with torch.no_grad(), workbench.model.hooked([(backend.site_module(f"blocks.{block}.resid_post"), write)]):
            backend.encode_image(pixels)
    naive = (clock() - start) * len(patches) / len(sample)
    return {
        "patches": len(patches),
        "seconds_ours": round(ours, 4),
        "seconds_naive": round(naive, 4),
        "speedup": round(naive / ours, 2),
        "naive_extrapolated": len(sample) < len(patches),
    }


def explain_speed(device: torch.device, repeats: int) -> dict:
    """Seconds per explanation on the toy LLaVA (see the module docstring)."""
    from engine.explain import Explainer, ExplainSettings
    from engine.resident import resident_sae
    from engine.specs import VLMSpec
    from engine.vlm import resident_vlm

    explainer = Explainer(resident_vlm(VLMSpec.toy(), device), resident_sae(SAESpec.toy(), device), None)
    settings = ExplainSettings().resolved()
    ours_latents, naive_latents = iter(range(10**6)), iter(range(10**6))  # the same latents on both sides

    def ours():
        explainer.explain(next(ours_latents) % explainer.d_sae, settings)

    def naive():
        latent = next(naive_latents) % explainer.d_sae
        for row in explainer._rows(latent, settings, [settings.coefficient]):
            explainer._generate([row], settings)

    speedup, ours_s, naive_s = interleaved_ratio(ours, naive, repeats)
    return {
        "seconds_per_explanation": round(ours_s, 3),
        "naive_seconds": round(naive_s, 3),
        "speedup": round(speedup, 2),
    }


class NoiseImages(ImageSource):
    """``n`` random images, image ``i`` always the same: a dataset for speed figures without any file."""

    def __init__(self, n: int, size: int, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed

    def __len__(self) -> int:
        return self.n

    def load(self, i: int) -> Image.Image:
        pixels = np.random.default_rng([self.seed, i]).integers(0, 256, (self.size, self.size, 3), dtype=np.uint8)
        return Image.fromarray(pixels)

    def describe(self) -> str:
        return f"noise:{self.n}x{self.size}px"


def sae_training_speed(backend, source: ImageSource, config: train_sae.TrainConfig) -> dict:
    """Tokens per second through ``config.steps`` training steps (reading and preprocessing the images, the model's
    prefix, the SAE's forward, backward and Adam step), after one warm-up step."""
    trainer = train_sae.Trainer(backend, source, config)
    trainer.calibrate()
    trainer.prepare()
    trainer.train_step()
    tokens, start = trainer.tokens_seen, clock()
    for _ in range(config.steps - 1):
        trainer.train_step()
    seconds = clock() - start
    return {
        "tokens_per_s": round((trainer.tokens_seen - tokens) / seconds, 1),
        "tokens_per_step": (trainer.tokens_seen - tokens) // (config.steps - 1),
        "d_sae": trainer.sae.config.d_sae,
    }


def index_speed(workbench: Workbench, source: ImageSource, batch_images: int) -> float:
    """Images per second through engine.index (reading, the prefix, the SAE encode, the accumulation), after a
    warm-up batch."""
    index.build_index(workbench, NoiseImages(batch_images, source.load(0).size[0], seed=99), batch_images=batch_images)
    start = clock()
    index.build_index(workbench, source, batch_images=batch_images)
    return round(len(source) / (clock() - start), 1)


def card_speed(workbench: Workbench, directory: Path, n_images: int, n_latents: int = 5) -> dict:
    """``latent_card_ms``: a card's time, p50 over the ``n_latents`` latents with the most top images (16 each
    with enough images), from an index (of ``n_images`` noise images in ``directory``) with its patch maps and with
    them left out."""
    data = directory / "card_images"
    bench_endpoints.image_files(data, bench_endpoints.noise_images(n_images, seed=55_003))
    index.build_index(workbench, FolderImages(str(data)), directory / "card_index", top_n=16, patch_maps=True)
    found = index.FeatureIndex(directory / "card_index")
    latents = sorted(range(found.d_sae), key=lambda s: -len(found.stats(s).top))[:n_latents]  # full cards first
    cards.latent_card(workbench, found, latents[0])  # warm-up

    def p50_ms() -> float:
        seconds = []
        for latent in latents:
            start = clock()
            cards.latent_card(workbench, found, latent)
            seconds.append(clock() - start)
        return round(statistics.median(seconds) * 1000, 1)

    with_maps = p50_ms()
    found.state.top_maps_SNP = None  # the same index without its maps: each card runs the model
    without = p50_ms()
    return {"patch_maps": with_maps, "model_run": without, "latents": len(latents)}


def dataset_scale(vit: Workbench, toy: Workbench, directory: str | Path) -> dict:
    """``sae_train_tokens_per_s`` and ``index_images_per_s`` on ViT-B/32 (random weights, 24,576 latents, k = 32,
    at blocks.10.resid_post, 224 px noise images) and on the toy model (its SAE's recipe: 384 latents, k = 32,
    rendered scenes); ``latent_card_ms`` on ViT-B/32 (files written under ``directory``)."""
    on_gpu = vit.device.type == "cuda"
    vit_config = train_sae.TrainConfig(
        vit.site, expansion=32, k=32, steps=6 if on_gpu else 3, images_per_step=64 if on_gpu else 8,
        eval_images=0, calibration_images=8,
    )  # fmt: skip
    toy_config = train_sae.TrainConfig(toy.site, expansion=4, k=32, steps=11, images_per_step=64, eval_images=0)
    vit_training = sae_training_speed(vit.backend, NoiseImages(1024, 224), vit_config)
    toy_training = sae_training_speed(toy.backend, ToyImages(2048, 41_001), toy_config)
    return {
        "vit_b32": {
            "sae_train_tokens_per_s": vit_training.pop("tokens_per_s"),
            "sae_train": vit_training,
            "index_images_per_s": index_speed(
                vit, NoiseImages(256 if on_gpu else 32, 224, seed=1), 64 if on_gpu else 16
            ),
            "latent_card_ms": card_speed(vit, Path(directory), 48),
        },
        "toy": {
            "sae_train_tokens_per_s": toy_training.pop("tokens_per_s"),
            "sae_train": toy_training,
            "index_images_per_s": index_speed(toy, ToyImages(1024, 41_002), 64),
        },
    }


def run(
    repeats: int = 7,
    n_memory_images: int = 200,
    with_cold_start: bool = True,
    dtype: str = "float32",
    only: str = "all",
) -> dict:
    torch.set_grad_enabled(True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result: dict = {"device": str(device), "dtype": dtype, "torch_threads": torch.get_num_threads(), "repeats": repeats}
    if only not in PARTS:
        raise UnknownChoiceError("part", only, PARTS)
    if only == "explain":
        return {**result, "explain": explain_speed(device, repeats)}
    if only == "endpoints":
        return {**result, "end_to_end": bench_endpoints.run(max(repeats, 8), device)}  # as in the full run
    if only == "vit_l14_336":
        return {**result, "vit_l14_336": large_model(device, repeats, large_dtypes(device, dtype))}
    if only == "dataset_scale":
        with tempfile.TemporaryDirectory() as tmp:
            toy = load_workbench(ModelSpec.toy(), SAESpec.toy(), str(device), dtype=dtype)
            return {**result, **dataset_scale(vit_b32_workbench(Path(tmp), device, dtype), toy, tmp)}
    with tempfile.TemporaryDirectory() as tmp:
        workbench = vit_b32_workbench(Path(tmp), device, dtype)
        images, latent = Images(224), 7
        result.update(speed_ratios(workbench, images, latent, repeats))
        marks = memory_after_images(workbench, images, latent, n_memory_images)
        result["rss_mb_after_200_images"] = marks[-1]
        result["rss_mb_by_quarter"] = marks
        result["cache_mb_budget"] = workbench.cache_bytes // 2**20
        result["patching_sweep"] = patching_sweep(workbench, images, NAIVE_PATCH_SAMPLE)
        result["peak_gpu_mb"] = peak_gpu_mb(device)
        toy = load_workbench(ModelSpec.toy(), SAESpec.toy(), str(device), dtype=dtype)
        scale = dataset_scale(workbench, toy, tmp)
        result.update(scale["vit_b32"])
        del workbench
    result["toy"] = speed_ratios(toy, Images(48, seed=1), latent, max(repeats, TOY_REPEATS))
    result["toy"]["patching_sweep"] = patching_sweep(toy, Images(48, seed=2))
    result["toy"].update(scale["toy"])
    if TOY_VLM_DIR.is_dir():
        result["explain"] = explain_speed(device, repeats)
    if device.type == "cuda":  # minutes on a CPU: there, ask for it alone (--only vit_l14_336)
        result["vit_l14_336"] = large_model(device, repeats, large_dtypes(device, dtype))
    result["end_to_end"] = bench_endpoints.run(max(repeats, 8), device)
    if with_cold_start:
        result["cold_start_s"] = round(cold_start_seconds(), 2)
    return result


def large_dtypes(device: torch.device, dtype: str) -> tuple[str, ...]:
    """float32 and bfloat16 on a GPU; the asked dtype alone on a CPU (bfloat16 matmuls there are emulated)."""
    return ("float32", "bfloat16") if device.type == "cuda" else (dtype,)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=200, help="distinct images for the memory figure")
    parser.add_argument("--dtype", default="float32", help="model and SAE precision (bfloat16/float16 on a GPU)")
    parser.add_argument(
        "--only", default="all", choices=PARTS, help="all figures, or one part alone (see the module docstring)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    result = run(args.repeats, args.images, dtype=args.dtype, only=args.only)
    result["targets"] = targets(result)
    print_result(result, args.json, width=32)


if __name__ == "__main__":
    main()
