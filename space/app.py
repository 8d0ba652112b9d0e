"""Hugging Face Space entry point: the toy world plus the real presets, served on all interfaces.

On a ZeroGPU Space every model is loaded at start-up onto 'cuda' and every handler that runs a model is
decorated with ``spaces.GPU(duration=...)`` (space/zerogpu.py, ui/gpu.py); on CPU hardware or locally the same
file serves the same app on the CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from space import zerogpu  # noqa: E402  (imports `spaces`, when installed, before torch)

PRESETS = ("prisma-vit-b32", "saev-vit-b16")


def build(device: str | None = None, presets: tuple[str, ...] = PRESETS):
    """The Space's Blocks: the toy world first (it opens at once), then the presets, all loaded now."""
    from app import create_app
    from engine.registry import TOY, preset
    from ui import gpu

    gpu.use(zerogpu.gpu if zerogpu.spaces is not None else None)
    choices = {TOY.name: TOY, **{name: preset(name) for name in presets}}
    return create_app(device or zerogpu.device(), choices, preload=True)


def main() -> None:
    import logging

    from app import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    serve(build(), host, port, concurrency=4 if zerogpu.on_zerogpu() else 1)  # GPU calls run in parallel workers


if __name__ == "__main__":
    main()
