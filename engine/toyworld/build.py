"""Rebuild every toy-world asset from scratch, deterministically, on a CPU.

    python -m engine.toyworld.build              # assets/toy_clip, toy_sae, toy_clip_shortcut, toy_vlm, examples
    python -m engine.toyworld.build --tiny --out /tmp/toy   # seconds: the same trainers on a tiny config

Each asset directory gets a ``manifest.json`` with its config, seed, the command and its metrics.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from engine.backends.open_clip_backend import OpenClipBackend
from engine.specs import ASSETS, ModelSpec
from engine.toyworld import render, train_clip, train_sae, train_shortcut, train_vlm

log = logging.getLogger(__name__)

EXAMPLE_SEED = 424_242
EXAMPLES = [
    render.Scene("circle", "red", "plain", "large", "top left", "absent"),
    render.Scene("square", "blue", "striped", "large", "bottom right", "absent"),
    render.Scene("triangle", "green", "dotted", "large", "top right", "absent"),
    render.Scene("cross", "yellow", "plain", "small", "bottom left", "absent"),
    render.Scene("circle", "magenta", "striped", "small", "bottom right", "present"),
    render.Scene("triangle", "cyan", "plain", "large", "bottom left", "present"),
]


def example_name(scene: render.Scene) -> str:
    return "_".join(v.replace(" ", "-") for v in (scene.colour, scene.shape, scene.position, scene.texture)) + (
        "_marker" if scene.marker == "present" else ""
    )


def write_examples(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    provenance = {}
    for i, scene in enumerate(EXAMPLES):
        image, _ = render.render(scene, EXAMPLE_SEED + i)
        name = f"{example_name(scene)}.png"
        image.save(out / name)
        provenance[name] = {"scene": scene.as_dict(), "seed": EXAMPLE_SEED + i}
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2))


STAGES = ("clip", "sae", "shortcut", "vlm", "examples")


def build(out: Path, tiny: bool = False, stages: tuple[str, ...] = STAGES, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    np.random.seed(0)
    clip_config, sae_config = train_clip.ToyClipConfig(), train_sae.ToySAEConfig()
    shortcut_config = train_shortcut.ShortcutConfig()
    vlm_config = train_vlm.ToyVLMConfig()
    if tiny:
        clip_config = replace(
            clip_config, layers=4, width=32, train_images=64, steps=2, batch_size=16, warm_start_steps=2
        )
        sae_config = replace(sae_config, train_images=32, steps=3, batch_tokens=64, label_images=48)
        shortcut_config = replace(shortcut_config, train_images=64, steps=2, batch_size=16, probe_images=32)
        vlm_config = replace(
            vlm_config, hidden=32, layers=1, intermediate=64, train_scenes=48, neutral_images=8, steps=4,
            batch_size=8, heldout_scenes=4,
        )  # fmt: skip
    command = " ".join(["python -m engine.toyworld.build", *sys.argv[1:]])
    start = time.time()
    if "clip" in stages:
        train_clip.train(clip_config, out / "toy_clip", device)
        stamp(out / "toy_clip", command)
    if "sae" in stages:
        backend = OpenClipBackend(ModelSpec("open_clip", f"local-dir:{out / 'toy_clip'}"), torch.device(device))
        train_sae.train(backend, sae_config, out / "toy_sae")
        stamp(out / "toy_sae", command)
    if "shortcut" in stages:
        train_shortcut.train(out / "toy_clip", shortcut_config, out / "toy_clip_shortcut", device)
        stamp(out / "toy_clip_shortcut", command)
    if "vlm" in stages:
        train_vlm.train(out / "toy_clip", vlm_config, out / "toy_vlm", device)
        stamp(out / "toy_vlm", command)
    if "examples" in stages:
        write_examples(out / "examples")
    summary = {"seconds": round(time.time() - start), "out": str(out)}
    log.info("built toy assets %s", summary)
    return summary


def stamp(directory: Path, command: str) -> None:
    manifest_path = directory / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["command"] = command
    manifest_path.write_text(json.dumps(manifest, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ASSETS, help="where to write (default: assets/)")
    parser.add_argument("--tiny", action="store_true", help="a few steps on a tiny config (a smoke test)")
    parser.add_argument(
        "--only", nargs="+", choices=STAGES, default=list(STAGES),
        help="build only these stages (the SAE stage reads the toy_clip already in --out)",
    )  # fmt: skip
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to train (default: cuda when present); the shipped assets were built on the CPU",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    build(args.out, tiny=args.tiny, stages=tuple(args.only), device=args.device)


if __name__ == "__main__":
    main()
