"""Helpers for tests that serve the app on loopback: a free port, a fine-tuned checkpoint as users bring one,
and a page of the served app in Debian's Chromium."""

from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.resident import resident_model
from engine.specs import ModelSpec
from scripts.screenshot import CHROMIUM, browser_page, free_port  # noqa: F401 - shared with the screenshot tour


def perturbed_checkpoint(reference: ModelSpec, block: int, path: Path, seed: int = 0) -> ModelSpec:
    """``reference``'s state dict with vision block ``block`` perturbed (5% of each tensor's std), saved as
    safetensors at ``path``: the intervened side of a Diff pair."""
    model = resident_model(reference, "cpu").backend.model
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().clone().contiguous()
        if name.startswith(f"visual.transformer.resblocks.{block}.") and tensor.is_floating_point():
            tensor += 0.05 * tensor.std() * torch.randn(tensor.shape, generator=generator)
        state[name] = tensor
    save_file(state, str(path))
    return ModelSpec(reference.family, reference.name, str(path))
