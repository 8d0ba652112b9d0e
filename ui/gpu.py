"""Handlers on a GPU lent per call (Hugging Face ZeroGPU), and unchanged everywhere else.

On ZeroGPU the process that serves the app holds the models but no GPU. A function decorated with
``spaces.GPU(duration=...)`` is run, for each call, in a forked worker that holds a GPU for at most
``duration`` seconds; its arguments and its return value cross between the processes by pickling. So:

- the decoration happens when the app is built (``spaces`` requires every decorated function to exist before
  launch), through :func:`on_gpu`, which ``ui.common.user_errors`` applies to every handler that runs a model;
- what a handler returns must pickle and hold no GPU tensor: tensors are moved to the CPU inside the worker
  (tables are plain data already: ui.readings.ShownTable);
- user errors become ``gr.Error`` inside the worker (``spaces`` re-raises those as they are; anything else
  would reach the user as "ZeroGPU worker error");
- whatever a handler caches inside the worker is lost with it: results never depend on such state.

Nothing is decorated until :func:`use` is given a decorator factory (the Space does this when ``spaces`` is
installed); elsewhere :func:`on_gpu` returns the handler itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

_factory: Callable[[Callable], Callable] | None = None


def use(factory: Callable[[Callable], Callable] | None) -> None:
    """Decorate the handlers of apps built from now on with ``factory(handler)`` (None: stop)."""
    global _factory
    _factory = factory


def portable(value):
    """A handler's result as data that pickles and lives on the CPU (tables, ui.readings.ShownTable, pickle as
    they are)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, tuple):
        return tuple(portable(v) for v in value)
    if isinstance(value, list):
        return [portable(v) for v in value]
    return value


def on_gpu(handler: Callable) -> Callable:
    """``handler`` run through the decorator given to :func:`use` (the handler itself when none was given)."""
    if _factory is None:
        return handler

    @functools.wraps(handler)
    def compute(*args, **kwargs):
        return portable(handler(*args, **kwargs))

    return _factory(compute)
