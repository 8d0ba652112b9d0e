"""Train a TopK SAE on the toy CLIP's residual stream, and label its latents from ground truth.

TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep the k largest
pre-activations per token, reconstruct with unit-norm decoder rows, minimise the squared error. An auxiliary
loss (AuxK) lets latents that have not fired for a while reconstruct the residual error, so few stay dead.
Trained on every token (class token and patches) of freshly rendered images.

Labels (the toy world's ground truth): a latent's image score is its maximum over tokens; for each concept
(a factor value, e.g. colour=red) the AUROC of that score at telling images with the concept from images
without it; a latent is labelled with the concept of highest AUROC. ``marker=absent`` is not a concept:
absence is not something a feature detects by its maximum, so the marker factor contributes
``marker=present`` only.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.backends.open_clip_backend import OpenClipBackend
from engine.resident import LATENT_INFO_FILE
from engine.sae import SAE, SAEConfig
from engine.toyworld.render import FACTORS, Scene, render_batch, sample_scenes
from engine.toyworld.train_clip import pixels_from_uint8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ToySAEConfig:
    site: str = "blocks.3.resid_post"
    expansion: int = 8
    k: int = 16
    train_images: int = 12_000
    steps: int = 3000
    batch_tokens: int = 4096
    lr: float = 1e-3
    aux_k: int = 64
    dead_after_tokens: int = 200_000
    label_images: int = 2000
    seed: int = 1


def concepts() -> list[tuple[str, str]]:
    """(factor, value) pairs that latents are scored against."""
    return [(f, v) for f, values in FACTORS.items() for v in values if (f, v) != ("marker", "absent")]


def concept_name(factor: str, value: str) -> str:
    return f"{factor}={value}"


@torch.no_grad()
def site_activations(backend: OpenClipBackend, site: str, images_NHWC: np.ndarray, batch: int = 256) -> torch.Tensor:
    """(N, T, D) residual stream at ``site`` for uint8 toy images."""
    out = []
    for i in range(0, len(images_NHWC), batch):
        out.append(backend.prefix(pixels_from_uint8(images_NHWC[i : i + batch]).to(backend.device), site).cpu())
    return torch.cat(out)


def auroc_matrix(scores_NS: np.ndarray, positive_NC: np.ndarray) -> np.ndarray:
    """AUROC of every score column for every binary concept column, (S, C); ties count one half."""
    n = scores_NS.shape[0]
    n_pos = positive_NC.sum(0).astype(np.float64)
    n_neg = n - n_pos
    out = np.zeros((scores_NS.shape[1], positive_NC.shape[1]))
    pos = positive_NC.astype(np.float64)
    for s in range(scores_NS.shape[1]):
        column = scores_NS[:, s]
        order = np.argsort(column, kind="stable")
        sorted_vals = column[order]
        ranks = np.empty(n)
        # average rank within ties
        _, starts, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
        avg = starts + (counts + 1) / 2.0
        ranks[order] = np.repeat(avg, counts)
        out[s] = (ranks @ pos - n_pos * (n_pos + 1) / 2) / np.maximum(n_pos * n_neg, 1)
    return out


def concept_matrix(scenes: list[Scene]) -> np.ndarray:
    return np.array([[getattr(s, f) == v for f, v in concepts()] for s in scenes], dtype=bool)


@torch.no_grad()
def image_scores(sae: SAE, acts_NTD: torch.Tensor, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per image and latent: the max over tokens, (N, S); and the summed activation and firing count per latent."""
    maxes, total, fired = [], torch.zeros(sae.config.d_sae), torch.zeros(sae.config.d_sae)
    for i in range(0, len(acts_NTD), batch):
        f_BTS = sae.encode(acts_NTD[i : i + batch])
        maxes.append(f_BTS.amax(1))
        total += f_BTS.sum((0, 1))
        fired += (f_BTS > 0).sum((0, 1))
    return torch.cat(maxes).numpy(), (total / fired.clamp_min(1)).numpy()


def label_latents(sae: SAE, acts_NTD: torch.Tensor, scenes: list[Scene]) -> dict:
    scores_NS, typical_S = image_scores(sae, acts_NTD)
    auroc_SC = auroc_matrix(scores_NS, concept_matrix(scenes))
    names = [concept_name(f, v) for f, v in concepts()]
    best_S = auroc_SC.argmax(1)
    alive_S = scores_NS.max(0) > 0
    fallback = float(np.median(typical_S[alive_S])) if alive_S.any() else 1.0
    return {
        "labels": [names[c] if alive else "inactive" for c, alive in zip(best_S, alive_S)],
        "scores": [round(float(auroc_SC[s, c]), 4) for s, c in enumerate(best_S)],
        "typical_activation": [float(t) if alive else fallback for t, alive in zip(typical_S, alive_S)],
        "concept_auroc": {names[c]: round(float(auroc_SC[:, c].max()), 4) for c in range(len(names))},
    }


def explained_variance(sae: SAE, x_ND: torch.Tensor) -> float:
    with torch.no_grad():
        residual = (x_ND - sae(x_ND)).pow(2).sum()
        return float(1 - residual / (x_ND - x_ND.mean(0)).pow(2).sum())


def train(backend: OpenClipBackend, config: ToySAEConfig, out_dir: Path | None = None) -> tuple[SAE, dict]:
    torch.manual_seed(config.seed)
    start = time.time()
    scenes = sample_scenes(config.train_images, 50_000 + config.seed)
    x_ND = site_activations(backend, config.site, render_batch(scenes)).flatten(0, 1)
    n_tokens, d_in = x_ND.shape
    log.info("collected %d tokens at %s in %.0fs", n_tokens, config.site, time.time() - start)

    d_sae = d_in * config.expansion
    sae = SAE(SAEConfig(d_in, d_sae, "topk", config.site, k=config.k, model_name="toy_clip"))
    with torch.no_grad():
        W_dec = torch.randn(d_sae, d_in)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(x_ND.mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    since_fired = torch.zeros(d_sae)
    scale = (x_ND - x_ND.mean(0)).pow(2).sum(1).mean()
    for step in range(config.steps):
        x_BD = x_ND[torch.randint(n_tokens, (config.batch_tokens,))]
        pre_BS = sae.pre_activation(x_BD)
        f_BS = sae.activate(pre_BS)
        error_BD = x_BD - sae.decode(f_BS)
        loss = error_BD.pow(2).sum(1).mean() / scale
        since_fired = torch.where((f_BS > 0).any(0), 0, since_fired + config.batch_tokens)
        dead_S = since_fired > config.dead_after_tokens
        if dead_S.any():
            k_aux = min(config.aux_k, int(dead_S.sum()))
            values_BK, indices_BK = pre_BS.masked_fill(~dead_S, float("-inf")).topk(k_aux, dim=-1)
            aux_BS = torch.zeros_like(pre_BS).scatter(-1, indices_BK, values_BK.relu())
            loss = loss + (error_BD.detach() - aux_BS @ sae.W_dec).pow(2).sum(1).mean() / scale / 32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
        if step % 500 == 0 or step == config.steps - 1:
            log.info("sae step %d/%d loss %.4f dead %d", step, config.steps, loss.item(), int(dead_S.sum()))
    sae.requires_grad_(False).eval()

    label_scenes = sample_scenes(config.label_images, 60_000 + config.seed)
    label_acts = site_activations(backend, config.site, render_batch(label_scenes))
    info = label_latents(sae, label_acts, [s for s, _ in label_scenes])
    metrics = {
        "explained_variance_heldout": round(explained_variance(sae, label_acts.flatten(0, 1)), 4),
        "concept_auroc_min": min(info["concept_auroc"].values()),
        "concept_auroc": info.pop("concept_auroc"),
        "inactive_latents": info["labels"].count("inactive"),
        "train_seconds": round(time.time() - start),
    }
    log.info("toy sae metrics %s", metrics)
    if out_dir is not None:
        sae.save(out_dir)
        (out_dir / LATENT_INFO_FILE).write_text(json.dumps(info))
        manifest = {"config": asdict(config), "seed": config.seed, "metrics": metrics}
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return sae, metrics
