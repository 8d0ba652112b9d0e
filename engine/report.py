"""How the engine's command lines print a result: one JSON object on stdout with ``--json`` (the contract that
scripts and CI read), otherwise one aligned line per field for a person; and how a run that ``accelerate launch``
started on several processes ends (`end_launched_process`).

>>> print_result({"a": 1, "b": [2, 3]}, as_json=True)
{"a": 1, "b": [2, 3]}
>>> print_result({"a": 1}, as_json=False, width=4)
a    1
"""

from __future__ import annotations

import json
import logging
import os
import sys


def print_result(result: dict, as_json: bool, width: int = 40) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:{width}s} {json.dumps(value)}")


def end_launched_process(num_processes: int) -> None:
    """End this process now, without the interpreter's teardown, when it is one of several that `accelerate
    launch` started; return at once in a single process.

    Why: with gloo (the CPU backend), a collective's finished work is released by one of torch's worker threads a
    moment after the caller's ``wait()`` returns. Once ``torch._dynamo`` is imported (open_clip and torchvision
    import it) the process group outlives ``destroy_process_group``, so those threads live into interpreter
    shutdown; a thread that then drops a tensor needs the GIL, and the process aborts (SIGABRT, "terminate called
    without an active exception"; pytorch/pytorch#190489). The caller has written and printed everything, so
    flushing the streams and leaving with ``os._exit(0)`` loses nothing.
    """
    if num_processes <= 1:
        return
    logging.shutdown()  # flushes every handler
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
