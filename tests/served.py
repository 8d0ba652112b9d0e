"""Helpers for tests that serve the app on loopback: a free port, a fine-tuned checkpoint as users bring one,
and a page of the served app in Debian's Chromium."""

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.resident import resident_model
from engine.specs import ModelSpec

CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


@contextlib.contextmanager
def browser_page(url: str | None, timeout_s: float, errors: list[str]) -> Iterator:
    """A 1400x1000 page in headless Chromium (Playwright driving Debian's binary, never its own downloads), at
    ``url`` when given; uncaught page errors are appended to ``errors``."""
    from playwright.sync_api import sync_playwright

    from scripts.screenshot import CHROMIUM_ARGS

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(timeout_s * 1000)
            page.on("pageerror", lambda error: errors.append(str(error)))
            if url is not None:
                page.goto(url, wait_until="domcontentloaded")  # never "networkidle": Gradio keeps a connection open
            yield page
        finally:
            browser.close()
