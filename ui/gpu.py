"""Handlers on a GPU lent per call (Hugging Face ZeroGPU), and unchanged everywhere else.

On ZeroGPU the process that serves the app holds the models but no GPU. A function decorated with
``spaces.GPU(duration=...)`` is run, for each call, in a forked worker that holds a GPU for at most
``duration`` seconds; its arguments and its return value cross between the processes by pickling. So:

- the decoration happens when the app is built (``spaces`` requires every decorated function to exist before
  launch), through :func:`on_gpu`, which ``ui.common.user_errors`` applies to every handler that runs a model;
- what a handler returns must pickle and hold no GPU tensor: pandas ``Styler`` tables (which hold lambdas) and
  tensors are turned into plain frames and CPU tensors inside the worker, and the tables restyled outside;
- user errors become ``gr.Error`` inside the worker (``spaces`` re-raises those as they are; anything else
  would reach the user as "ZeroGPU worker error");
- whatever a handler caches inside the worker is lost with it: results never depend on such state.

Nothing is decorated until :func:`use` is given a decorator factory (the Space does this when ``spaces`` is
installed); elsewhere :func:`on_gpu` returns the handler itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from pandas.io.formats.style import Styler

_factory: Callable[[Callable], Callable] | None = None


def use(factory: Callable[[Callable], Callable] | None) -> None:
    """Decorate the handlers of apps built from now on with ``factory(handler)`` (None: stop)."""
    global _factory
    _factory = factory


@dataclass(frozen=True)
class PortableTable:
    """A styled table as plain data, to cross a process boundary."""

    frame: pd.DataFrame


def portable(value):
    """A handler's result as data that pickles and lives on the CPU."""
    if isinstance(value, Styler):
        return PortableTable(value.data)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, tuple):
        return tuple(portable(v) for v in value)
    if isinstance(value, list):
        return [portable(v) for v in value]
    return value


def restored(value):
    """The inverse of :func:`portable` for tables: styled again as the app shows them."""
    from ui import readings

    if isinstance(value, PortableTable):
        return readings.display_table(value.frame)
    if isinstance(value, tuple):
        return tuple(restored(v) for v in value)
    if isinstance(value, list):
        return [restored(v) for v in value]
    return value


def on_gpu(handler: Callable) -> Callable:
    """``handler`` run through the decorator given to :func:`use` (the handler itself when none was given)."""
    if _factory is None:
        return handler

    @functools.wraps(handler)
    def compute(*args, **kwargs):
        return portable(handler(*args, **kwargs))

    decorated = _factory(compute)

    @functools.wraps(handler)
    def run(*args, **kwargs):
        return restored(decorated(*args, **kwargs))

    return run
