"""``spaces`` when it is installed (on Hugging Face Spaces), a no-op shim everywhere else.

Import this module before torch touches CUDA: on a ZeroGPU Space, ``spaces`` must be imported first so that it
can patch torch's CUDA initialisation in the serving process (which holds no GPU until a decorated call).
"""

from __future__ import annotations

import os
from collections.abc import Callable

try:
    import spaces
except ImportError:  # not on a Space: every decorator below returns the function unchanged
    spaces = None

DEFAULT_DURATION_S = 20
DURATIONS_S = {"diff_handler": 90, "patch_handler": 60, "ripple": 40, "sweep": 60, "explain": 60, "explain_top": 120}
"""GPU seconds asked for per call, by handler name: small, since a shorter duration gets a better place in
ZeroGPU's queue (on an H200 slice an attribution or a steering sweep on ViT-B takes well under a second; a diff
runs both models over the probe set; the Explain tab generates text, and its sweep shares the name `sweep`)."""


def on_zerogpu() -> bool:
    """Whether this process serves a ZeroGPU Space (the variable ``spaces`` itself reads)."""
    return spaces is not None and os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def gpu(handler: Callable) -> Callable:
    """``handler`` decorated with ``spaces.GPU(duration=...)`` for its name; unchanged without ``spaces``."""
    if spaces is None:
        return handler
    return spaces.GPU(duration=DURATIONS_S.get(handler.__name__, DEFAULT_DURATION_S))(handler)


def device() -> str | None:
    """'cuda' on ZeroGPU (models are moved there at start-up, as ZeroGPU expects); else the app's own choice."""
    return "cuda" if on_zerogpu() else None
