"""Train the toy world's CLIP: a real open_clip ``CLIP`` (ViT image tower with patch tokens + text tower).

Contrastive training as in CLIP (Radford et al. 2021) with two changes that the toy world allows because
its ground truth is known:

* **multi-positive targets**: captions are partial ("a red shape"), so several captions in a batch can be
  true of one image. The image->text and text->image cross-entropies use as target the uniform distribution
  over every consistent pair, instead of the diagonal (no false negatives);
* **hard negatives**: each image also brings a full caption of itself with one factor changed, so that the
  model must get every factor right, not just the easiest one that tells batch items apart.

* **a supervised warm start**: before the contrastive steps, ``warm_start_steps`` steps train the image
  tower alone with one linear head per factor on the image embedding (cross-entropy, the heads thrown away
  afterwards). Position is a saddle for contrastive learning from scratch: at initialisation the class token
  averages the patches almost uniformly, so the image embedding carries no position, so the text tower's
  position words get no gradient, and vice versa (the first shipped model, 2,000 contrastive steps alone,
  stayed at chance on position: 0.28). The warm start breaks the symmetry; what is shipped is still an
  ordinary CLIP used zero-shot, the heads are not part of it.
* **read-outs at the SAE's site** (``site_block``): small linear heads on that block's patch tokens, trained
  in both phases (weight ``site_weight`` in the contrastive one) and thrown away: each patch predicts what
  lies under it (background, one of the four shapes, or the marker), shape patches their colour and size,
  background patches the texture. Without them the middle of a 4-block tower carries shape only diffusely
  (no single SAE latent told circles from the rest better than AUROC 0.65 at blocks.2); with them its patch
  tokens carry the concepts where they are in the image, as the middle layers of large ViTs do, so the SAE
  there finds latents that mean one thing and heatmaps land on the object;
* **average pooling** (open_clip's ``pool_type="avg"``: the embedding is the mean of the patch tokens after
  the last block, as in SigLIP-style and DINO-style towers; the class token is still there but not read by
  the head). With class-token pooling the class token had gathered every factor by the middle of this small
  tower, so an edit at the object's patches there could not change the answer (adding a colour latent at the
  shape's patches at 16x its typical activation left the colour unchanged); with average pooling what the
  patches carry is what the model answers from, as patch-level steering and heatmaps assume.

The model is built from an open_clip config and saved as an open_clip ``local-dir`` (``open_clip_config.json``
+ ``open_clip_model.safetensors``), so the app loads it through the same code path as any real open_clip model.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from engine.hooks import attached
from engine.toyworld import captions
from engine.toyworld.render import FACTORS, IMAGE_SIZE, Scene, render_batch, render_batch_with_truth, sample_scenes

log = logging.getLogger(__name__)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class ToyClipConfig:
    width: int = 96
    layers: int = 4
    patch_size: int = 8
    embed_dim: int = 64
    text_width: int = 64
    text_layers: int = 2
    context_length: int = 24
    train_images: int = 40_000
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-3
    warm_start_steps: int = 500
    warm_start_lr: float = 2e-3
    site_block: int | None = 2
    site_weight: float = 0.5
    pool_type: str = "avg"
    seed: int = 0

    def open_clip_config(self) -> dict:
        return {
            "model_cfg": {
                "embed_dim": self.embed_dim,
                "vision_cfg": {
                    "image_size": IMAGE_SIZE,
                    "layers": self.layers,
                    "width": self.width,
                    "head_width": 32,
                    "patch_size": self.patch_size,
                    "pool_type": self.pool_type,
                },
                "text_cfg": {
                    "context_length": self.context_length,
                    "vocab_size": 49408,
                    "width": self.text_width,
                    "heads": max(1, self.text_width // 32),
                    "layers": self.text_layers,
                },
            },
            "preprocess_cfg": {"size": IMAGE_SIZE, "mean": list(MEAN), "std": list(STD), "interpolation": "bicubic"},
        }


def pixels_from_uint8(images_NHWC: np.ndarray) -> torch.Tensor:
    """The model's preprocessing for images already at 48x48 (equal to open_clip's transform on them)."""
    x_NCHW = torch.from_numpy(images_NHWC).permute(0, 3, 1, 2).float() / 255.0
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x_NCHW - mean) / std


class CaptionTokens:
    """Tokenize captions once each (the grammar has few distinct strings)."""

    def __init__(self, context_length: int):
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            for t, ids in zip(missing, self.tokenizer(missing)):
                self.cache[t] = ids
        return torch.stack([self.cache[t] for t in texts])


def multi_positive_loss(logits_IT: torch.Tensor, positive_IT: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy against uniform targets over the positives of each row / column."""
    target_i = positive_IT / positive_IT.sum(1, keepdim=True).clamp_min(1)
    has_pos_t = positive_IT.sum(0) > 0
    target_t = positive_IT[:, has_pos_t] / positive_IT[:, has_pos_t].sum(0, keepdim=True)
    loss_i = -(target_i * F.log_softmax(logits_IT, dim=1)).sum(1).mean()
    loss_t = -(target_t * F.log_softmax(logits_IT[:, has_pos_t], dim=0)).sum(0).mean()
    return (loss_i + loss_t) / 2


def consistency_matrix(scenes: list[Scene], mentions: list[dict[str, str]]) -> torch.Tensor:
    """(I, T) 1.0 where caption t is true of scene i (every factor it mentions matches), vectorised."""
    factors = list(FACTORS)
    codes_IF = torch.tensor([[FACTORS[f].index(getattr(s, f)) for f in factors] for s in scenes])
    mentioned_TF = torch.tensor([[FACTORS[f].index(m[f]) if f in m else -1 for f in factors] for m in mentions])
    match_ITF = (mentioned_TF.unsqueeze(0) == codes_IF.unsqueeze(1)) | (mentioned_TF.unsqueeze(0) < 0)
    return match_ITF.all(-1).float()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def zero_shot_accuracy(model, tokens: CaptionTokens, n: int = 600, seed: int = 10_001) -> dict[str, float]:
    """Per factor: classify among the factor's values with the other words of the caption fixed to the truth.
    Runs wherever the model lives (CPU or GPU)."""
    model.eval()
    device = model_device(model)
    scenes = sample_scenes(n, seed)
    img_NE = F.normalize(model.encode_image(pixels_from_uint8(render_batch(scenes)).to(device)).float(), dim=-1)
    accuracy = {}
    for factor, values in FACTORS.items():
        prompts = [p for scene, _ in scenes for p in captions.factor_prompts(scene, factor)]
        txt_NVE = F.normalize(model.encode_text(tokens(prompts).to(device)).float(), dim=-1).view(n, len(values), -1)
        predicted = torch.einsum("ne,nve->nv", img_NE, txt_NVE).argmax(1).cpu()
        truth = torch.tensor([values.index(getattr(s, factor)) for s, _ in scenes])
        accuracy[factor] = float((predicted == truth).float().mean())
    return accuracy


def factor_codes(scenes: list[Scene]) -> torch.Tensor:
    """(N, F) index of each factor's value per scene."""
    return torch.tensor([[FACTORS[f].index(getattr(s, f)) for f in FACTORS] for s in scenes])


N_CONTENT = 1 + len(FACTORS["shape"]) + 1  # per patch: background, each shape, the marker
MARKER_CLASS = N_CONTENT - 1


class SiteHeads(torch.nn.Module):
    """Linear read-outs at one block's output, used only while training (see the module docstring)."""

    def __init__(self, width: int):
        super().__init__()
        self.content = torch.nn.Linear(width, N_CONTENT)
        self.colour = torch.nn.Linear(width, len(FACTORS["colour"]))
        self.size = torch.nn.Linear(width, len(FACTORS["size"]))
        self.texture = torch.nn.Linear(width, len(FACTORS["texture"]))

    def loss(self, acts_BTD: torch.Tensor, codes_BF: torch.Tensor, shape_BP: torch.Tensor, marker_BP: torch.Tensor):
        """Cross-entropies of each patch's content, and of the colour and size of shape patches and the texture
        of background patches."""
        factor_index = {f: j for j, f in enumerate(FACTORS)}
        patches_BPD = acts_BTD[:, 1:]
        on_shape_BP, on_marker_BP = shape_BP >= 0.5, marker_BP >= 0.5
        background_BP = (shape_BP == 0) & (marker_BP == 0)
        content_BP = torch.zeros_like(shape_BP, dtype=torch.long)
        content_BP = torch.where(on_shape_BP, 1 + codes_BF[:, factor_index["shape"], None], content_BP)
        content_BP = torch.where(on_marker_BP & ~on_shape_BP, MARKER_CLASS, content_BP)
        loss = F.cross_entropy(self.content(patches_BPD).flatten(0, 1), content_BP.flatten())
        for name, where_BP in (("colour", on_shape_BP), ("size", on_shape_BP), ("texture", background_BP)):
            if where_BP.any():
                target_BP = codes_BF[:, factor_index[name], None].expand_as(where_BP)
                logits_ND = getattr(self, name)(patches_BPD[where_BP])
                loss = loss + F.cross_entropy(logits_ND, target_BP[where_BP])
        return loss


def encode_image_and_site(model, pixels_BCHW: torch.Tensor, site_block: int | None):
    """The model's own ``encode_image``, and the output of block ``site_block`` captured on the way (None if
    no block is asked for). Training only: hooks on a model that no one else uses."""
    captured = []
    if site_block is None:
        return model.encode_image(pixels_BCHW), None
    block = model.visual.transformer.resblocks[site_block]
    with attached([(block, lambda module, inputs, output: captured.append(output))]):
        emb_BE = model.encode_image(pixels_BCHW)
    return emb_BE, captured[0]


class Supervision:
    """Per-image factor codes and per-patch coverage of the training pool, and the site heads."""

    def __init__(self, config: ToyClipConfig, pool: list, shape_NP: np.ndarray, marker_NP: np.ndarray, device):
        self.config, self.device = config, device
        self.codes_NF = factor_codes([s for s, _ in pool])
        self.shape_NP = torch.from_numpy(shape_NP.reshape(len(pool), -1))
        self.marker_NP = torch.from_numpy(marker_NP.reshape(len(pool), -1))
        self.heads = SiteHeads(config.width).to(device) if config.site_block is not None else None

    def site_loss(self, site_BTD, idx) -> torch.Tensor:
        if self.heads is None:
            return torch.zeros((), device=self.device)
        return self.heads.loss(
            site_BTD, self.codes_NF[idx].to(self.device), self.shape_NP[idx].to(self.device),
            self.marker_NP[idx].to(self.device),
        )  # fmt: skip


def warm_start(model, config: ToyClipConfig, supervision: Supervision, pool_images: np.ndarray, rng, device) -> float:
    """Supervised steps on the image tower: one linear head per factor on the normalised image embedding, plus
    the site heads. Returns the last loss. The heads are discarded; only the image tower keeps what it learnt."""
    heads = torch.nn.ModuleDict({f: torch.nn.Linear(config.embed_dim, len(v)) for f, v in FACTORS.items()}).to(device)
    params = list(model.visual.parameters()) + list(heads.parameters())
    if supervision.heads is not None:
        params += list(supervision.heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.warm_start_lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.warm_start_lr, total_steps=config.warm_start_steps, pct_start=0.1
    )
    loss = torch.zeros(())
    for step in range(config.warm_start_steps):
        idx = rng.choice(len(pool_images), config.batch_size, replace=False)
        emb_BE, site_BTD = encode_image_and_site(
            model, pixels_from_uint8(pool_images[idx]).to(device), config.site_block
        )
        img_BE = F.normalize(emb_BE, dim=-1)
        codes_BF = supervision.codes_NF[idx].to(device)
        loss = sum(F.cross_entropy(heads[f](img_BE * 10), codes_BF[:, j]) for j, f in enumerate(FACTORS))
        loss = loss + supervision.site_loss(site_BTD, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == config.warm_start_steps - 1:
            log.info("warm start step %d/%d loss %.4f", step, config.warm_start_steps, loss.item())
    return float(loss)


def train(
    config: ToyClipConfig, out_dir: Path | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict]:
    """Train from scratch; if ``out_dir`` is given, save the open_clip local-dir and a manifest there."""
    device = torch.device(device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    oc_config = config.open_clip_config()
    model = open_clip.model.CLIP(**oc_config["model_cfg"]).to(device)
    tokens = CaptionTokens(config.context_length)

    start = time.time()
    pool = sample_scenes(config.train_images, config.seed)
    pool_images, shape_NP, marker_NP = render_batch_with_truth(pool, config.patch_size)
    log.info("rendered %d training images in %.0fs", len(pool), time.time() - start)
    supervision = Supervision(config, pool, shape_NP, marker_NP, device)

    model.train()
    if config.warm_start_steps:
        warm_start(model, config, supervision, pool_images, rng, device)
        log.info("warm start done (%.0fs)", time.time() - start)
    params = list(model.parameters())
    if supervision.heads is not None:
        params += list(supervision.heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=config.steps, pct_start=0.1)
    model.train()
    for step in range(config.steps):
        idx = rng.choice(len(pool), config.batch_size, replace=False)
        scenes: list[Scene] = [pool[i][0] for i in idx]
        mentions = [captions.random_mention(s, rng) for s in scenes]
        mentions += [captions.one_factor_changed(s, rng) for s in scenes]
        positive_IT = consistency_matrix(scenes, mentions).to(device)
        emb_IE, site_ITD = encode_image_and_site(
            model, pixels_from_uint8(pool_images[idx]).to(device), config.site_block
        )
        img_IE = F.normalize(emb_IE, dim=-1)
        txt_TE = F.normalize(model.encode_text(tokens([captions.caption(m) for m in mentions]).to(device)), dim=-1)
        logits_IT = model.logit_scale.exp().clamp(max=100) * img_IE @ txt_TE.T
        loss = multi_positive_loss(logits_IT, positive_IT)
        if config.site_block is not None:
            loss = loss + config.site_weight * supervision.site_loss(site_ITD, idx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == config.steps - 1:
            log.info("clip step %d/%d loss %.4f (%.0fs)", step, config.steps, loss.item(), time.time() - start)

    model.eval()
    metrics = {"zero_shot_accuracy": zero_shot_accuracy(model, tokens), "train_seconds": round(time.time() - start)}
    log.info("toy clip metrics %s", metrics)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "open_clip_config.json").write_text(json.dumps(oc_config, indent=2))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out_dir / "open_clip_model.safetensors"))
        manifest = {"config": asdict(config), "seed": config.seed, "metrics": metrics}
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return model, metrics
