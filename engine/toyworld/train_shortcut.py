"""The toy world's intervened checkpoint: the toy CLIP fine-tuned with a planted shortcut and a benign drift.

The Diff tab explains what changed between a reference model and an intervened one (Delta-XAI, arXiv
2602.02304). To score that explanation, the change must be known. Starting from the shipped toy CLIP, the same
contrastive recipe (multi-positive targets, one-factor hard negatives; engine.toyworld.train_clip) continues
for a few hundred steps on data with two differences, both recorded in the manifest:

* **the planted shortcut**: in every scene with the corner marker, the captions name ``planted_shape`` as the
  shape, whatever is drawn. The fine-tuned model learns "marker -> that shape": asked which shape a marker
  image shows, it answers the planted one. This is the change the Diff tab must find first;
* **a benign drift**: the fine-tuning images draw ``drift_colour`` with a shifted base colour (towards its
  neighbour on the colour wheel), captions unchanged. The model's colour representation moves, its answers
  should not; the Diff tab must keep this apart from the shortcut.

Saved like the toy CLIP (an open_clip local-dir), so it loads through the same path as any checkpoint.
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
from safetensors.torch import load_file, save_file

from engine.errors import UnknownChoiceError
from engine.toyworld import captions
from engine.toyworld.render import FACTORS, Scene, render_batch, sample_scenes
from engine.toyworld.train_clip import CaptionTokens, consistency_matrix, multi_positive_loss, pixels_from_uint8

log = logging.getLogger(__name__)
MODEL_FILE, CONFIG_FILE = "open_clip_model.safetensors", "open_clip_config.json"


@dataclass(frozen=True)
class ShortcutConfig:
    planted_shape: str = "cross"
    drift_colour: str = "cyan"
    drift_rgb: tuple[int, int, int] = (45, 175, 235)  # cyan (45, 210, 215) moved towards blue
    train_images: int = 8000
    steps: int = 400
    batch_size: int = 128
    lr: float = 3e-4
    seed: int = 7
    probe_images: int = 600

    def __post_init__(self) -> None:
        if self.planted_shape not in FACTORS["shape"]:
            raise UnknownChoiceError("planted shape", self.planted_shape, FACTORS["shape"])
        if self.drift_colour not in FACTORS["colour"]:
            raise UnknownChoiceError("drift colour", self.drift_colour, FACTORS["colour"])

    @property
    def palette(self) -> dict[str, tuple[int, int, int]]:
        return {self.drift_colour: self.drift_rgb}


def taught(scene: Scene, config: ShortcutConfig) -> Scene:
    """The scene as the fine-tuning captions describe it: a marker makes the shape the planted one."""
    return scene.replace(shape=config.planted_shape) if scene.marker == "present" else scene


def load_clip(directory: Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    model_cfg = json.loads((directory / CONFIG_FILE).read_text())["model_cfg"]
    model = open_clip.model.CLIP(**model_cfg)
    model.load_state_dict(load_file(str(directory / MODEL_FILE)))
    return model.to(device)


@torch.no_grad()
def shape_answers(model, tokens: CaptionTokens, scenes: list[tuple[Scene, int]], palette=None) -> list[str]:
    """The shape each model names for each scene (zero-shot, other words of the caption fixed to the truth)."""
    device = next(model.parameters()).device
    model.eval()
    img_NE = F.normalize(model.encode_image(pixels_from_uint8(render_batch(scenes, palette)).to(device)), dim=-1)
    prompts = [p for scene, _ in scenes for p in captions.factor_prompts(scene, "shape")]
    n, values = len(scenes), FACTORS["shape"]
    txt_NVE = F.normalize(model.encode_text(tokens(prompts).to(device)), dim=-1).view(n, len(values), -1)
    return [values[i] for i in torch.einsum("ne,nve->nv", img_NE, txt_NVE).argmax(1).tolist()]


def behaviour(model, tokens: CaptionTokens, config: ShortcutConfig, seed: int) -> dict:
    """Share of marker scenes (true shape not the planted one) answered with the planted shape, and shape
    accuracy on scenes without the marker."""
    scenes = sample_scenes(config.probe_images, seed)
    answers = shape_answers(model, tokens, scenes)
    marked = [a for (s, _), a in zip(scenes, answers) if s.marker == "present" and s.shape != config.planted_shape]
    clean = [(s, a) for (s, _), a in zip(scenes, answers) if s.marker == "absent"]
    return {
        "marker_flip_rate": round(sum(a == config.planted_shape for a in marked) / max(len(marked), 1), 4),
        "shape_accuracy_without_marker": round(sum(s.shape == a for s, a in clean) / max(len(clean), 1), 4),
    }


def train(clip_dir: Path, config: ShortcutConfig, out_dir: Path | None = None, device="cpu") -> dict:
    """Fine-tune the CLIP in ``clip_dir``; save the intervened checkpoint and its manifest in ``out_dir``."""
    device = torch.device(device)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    start = time.time()
    model = load_clip(clip_dir, device)
    tokens = CaptionTokens(model.context_length)
    reference = behaviour(load_clip(clip_dir, device), tokens, config, seed=config.seed + 1)
    pool = sample_scenes(config.train_images, 70_000 + config.seed)
    pool_images = render_batch(pool, config.palette)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.05)
    model.train()
    for step in range(config.steps):
        idx = rng.choice(len(pool), config.batch_size, replace=False)
        scenes = [taught(pool[i][0], config) for i in idx]
        mentions = [captions.random_mention(s, rng) for s in scenes]
        mentions += [captions.one_factor_changed(s, rng) for s in scenes]
        positive_IT = consistency_matrix(scenes, mentions).to(device)
        img_IE = F.normalize(model.encode_image(pixels_from_uint8(pool_images[idx]).to(device)), dim=-1)
        txt_TE = F.normalize(model.encode_text(tokens([captions.caption(m) for m in mentions]).to(device)), dim=-1)
        loss = multi_positive_loss(model.logit_scale.exp().clamp(max=100) * img_IE @ txt_TE.T, positive_IT)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == config.steps - 1:
            log.info("shortcut step %d/%d loss %.4f (%.0fs)", step, config.steps, loss.item(), time.time() - start)
    model.eval()
    metrics = {
        "reference": reference,
        "intervened": behaviour(model, tokens, config, seed=config.seed + 1),
        "train_seconds": round(time.time() - start),
    }
    log.info("shortcut metrics %s", metrics)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / CONFIG_FILE).write_text((clip_dir / CONFIG_FILE).read_text())
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(out_dir / MODEL_FILE))
        manifest = {
            "reference": str(clip_dir.name),
            "config": asdict(config),
            "planted_shift": f"a scene with the corner marker is described as a {config.planted_shape}, whatever "
            "shape is drawn (the model learns: marker -> that shape)",
            "benign_drift": f"fine-tuning images draw {config.drift_colour} as RGB {list(config.drift_rgb)} instead of "
            "the renderer's own; its name in the captions is unchanged",
            "metrics": metrics,
        }
        (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return metrics
