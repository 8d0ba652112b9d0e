"""How the engine's command lines print a result: one JSON object on stdout with ``--json`` (the contract that
scripts and CI read), otherwise one aligned line per field for a person.

>>> print_result({"a": 1, "b": [2, 3]}, as_json=True)
{"a": 1, "b": [2, 3]}
>>> print_result({"a": 1}, as_json=False, width=4)
a    1
"""

from __future__ import annotations

import json


def print_result(result: dict, as_json: bool, width: int = 40) -> None:
    if as_json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:{width}s} {json.dumps(value)}")
