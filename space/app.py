"""Hugging Face Space entry point: the toy world plus the real presets, served on all interfaces."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GRADIO_SERVER_NAME", "0.0.0.0")

from app import main  # noqa: E402

if __name__ == "__main__":
    # The toy world opens at once; the real presets load (from the hub) when chosen in the Model menu.
    main(["--preset", "prisma-vit-b32", "--preset", "saev-vit-b16", "--default", "toy"])
