"""Hugging Face Space entry point: the workbench on the embedded toy world, served on all interfaces."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("GRADIO_SERVER_NAME", "0.0.0.0")

from app import main  # noqa: E402

if __name__ == "__main__":
    main([])
