"""The one place where hooks are added to a model, and always removed.

PyTorch hooks are global state on a module: a hook that outlives its request silently edits every later
forward pass, including other users' (TransformerLens states the same footgun). So no code in this project
calls ``register_forward_hook`` itself; it goes through :func:`attached`, which removes every hook in a
``finally`` block, even when the forward pass raises. On a resident model, code goes one step further up,
through ``ResidentModel.hooked`` (engine.resident), which holds the model's lock while the hooks are attached:
a hook is visible to every forward pass on the module, so no other request may run that model meanwhile.

Most of the engine needs no hooks at all: backends split a model into a prefix and a suffix at a site and
edit the activations between the two calls. Hooks serve where a model cannot be split (a vision tower
inside a VLM's ``generate``) and as the slow, obviously-correct reference in tests and benchmarks.

>>> import torch
>>> layer = torch.nn.Linear(2, 2)
>>> with attached([(layer, lambda module, inputs, output: output * 0)]):
...     float(layer(torch.ones(1, 2)).abs().sum())
0.0
>>> len(layer._forward_hooks)
0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

ForwardHook = Callable[[torch.nn.Module, tuple, object], object]


@contextmanager
def attached(hooks: Iterable[tuple[torch.nn.Module, ForwardHook]]) -> Iterator[None]:
    """Register forward hooks ``(module, fn)`` for the duration of the block; ``fn`` may return a new output.

    Ours run before any hook the library put on the module itself (``prepend``, in the order given): transformers 5
    records ``hidden_states`` with its own forward hooks on each layer, so an edit that ran after them would
    change what the next layer reads but not the recorded hidden states, which is what LLaVA reads
    (``vision_feature_layer``)."""
    handles = []
    try:
        for module, fn in reversed(list(hooks)):
            handles.append(module.register_forward_hook(fn, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
