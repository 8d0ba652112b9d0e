"""The Hugging Face Space: its front matter and requirements agree with the repository, `spaces` is optional
(a no-op shim without it), and the Space's app builds offline and serves through a fake `spaces` module that
behaves as ZeroGPU does at the boundary: arguments and results cross by pickling, nothing may stay on a GPU."""

from __future__ import annotations

import importlib
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from gradio_client import Client, handle_file

from engine.registry import PRESETS
from engine.specs import ASSETS

from .conftest import SHAPES
from .served import free_port

ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "space"


def front_matter() -> dict:
    text = (SPACE / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def pins(path: Path) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return dict(line.split("==") for line in lines if "==" in line)


def test_the_front_matter_names_what_the_space_needs():
    meta = front_matter()
    raw = (SPACE / "README.md").read_text(encoding="utf-8")
    assert f'python_version: "{meta["python_version"]}"' in raw  # quoted: YAML would read 3.10 as 3.1
    assert meta["python_version"] in ("3.12.12", "3.10.13")  # the versions ZeroGPU lists
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == pins(ROOT / "requirements.txt")["gradio"]
    assert (ROOT / meta["app_file"]).is_file()
    assert meta["startup_duration_timeout"]
    space_presets = importlib.import_module("space.app").PRESETS
    hub_ids = set()
    for name in space_presets:
        chosen = PRESETS[name]
        model_id = chosen.model.name.removeprefix("hf-hub:") if chosen.model.name.startswith("hf-hub:") else None
        sae_repo = "/".join(chosen.sae.path.removeprefix("hf:").split("/")[:2])
        hub_ids |= {sae_repo} | ({model_id} if model_id else set())
    preloaded = {entry.split()[0] for entry in meta["preload_from_hub"]}
    assert hub_ids <= set(meta["models"]) and hub_ids <= preloaded, hub_ids - preloaded


def test_the_space_requirements_match_the_repository_except_a_torch_that_zerogpu_supports():
    space, repo = pins(SPACE / "requirements.txt"), pins(ROOT / "requirements.txt")
    assert space["torch"] in ("2.8.0", "2.9.1", "2.10.0", "2.11.0")
    assert (
        space["torchvision"]
        == {"2.8.0": "0.23.0", "2.9.1": "0.24.1", "2.10.0": "0.25.0", "2.11.0": "0.26.0"}[space["torch"]]
    )
    rest = {k: v for k, v in repo.items() if k not in ("torch", "torchvision")}
    assert {k: space.get(k) for k in rest} == rest


def test_without_spaces_the_shim_changes_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # `import spaces` raises ImportError
    shim = importlib.reload(importlib.import_module("space.zerogpu"))
    try:

        def handler(x):
            return x

        assert shim.spaces is None and shim.gpu(handler) is handler
        assert shim.device() is None and not shim.on_zerogpu()
    finally:
        monkeypatch.undo()
        importlib.reload(shim)


class FakeSpaces(types.ModuleType):
    """`spaces` as ZeroGPU behaves at the boundary: each call's arguments and result are pickled (a result holding
    a lambda or a CUDA tensor fails there), and every decorated function and its duration is recorded."""

    def __init__(self):
        super().__init__("spaces")
        self.decorated: dict[str, int] = {}
        self.calls: list[str] = []

    def GPU(self, task=None, *, duration=None):  # noqa: N802 - the real name
        def decorate(fn):
            self.decorated[fn.__name__] = duration

            def run(*args, **kwargs):
                self.calls.append(fn.__name__)
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                result = fn(*args, **kwargs)
                for tensor in _tensors(result):
                    assert tensor.device.type == "cpu"
                return pickle.loads(pickle.dumps(result))

            return run

        return decorate(task) if task is not None else decorate


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


@pytest.fixture(scope="module")
def space_client(workbench):
    fake = FakeSpaces()
    saved = sys.modules.get("spaces")
    sys.modules["spaces"] = fake
    from ui import gpu

    try:
        shim = importlib.reload(importlib.import_module("space.zerogpu"))
        space_app = importlib.reload(importlib.import_module("space.app"))
        app = space_app.build(device="cpu")  # offline: the presets are not cached, so only the toy loads
        from app import serve

        port = free_port()
        serve(app, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        yield Client(f"http://127.0.0.1:{port}/", verbose=False), fake
        app.close()
    finally:
        gpu.use(None)
        if saved is None:
            sys.modules.pop("spaces", None)
        else:
            sys.modules["spaces"] = saved
        importlib.reload(shim)


def test_the_space_app_builds_offline_and_runs_its_handlers_through_spaces_gpu(space_client):
    client, fake = space_client
    assert {"attribute", "steer", "sweep", "diff_handler", "patch_handler"} <= set(fake.decorated)
    assert "switch" not in fake.decorated  # a look-up, not GPU work
    assert all(0 < duration <= 120 for duration in fake.decorated.values())
    example = handle_file(str(sorted((ASSETS / "examples").glob("*.png"))[0]))
    labels = ", ".join(SHAPES)
    predictions, latents, gallery, *_, reading = client.predict(
        example, labels, "a {}", "", "logit_difference", 4, api_name="/attribute"
    )
    assert len(latents["data"]) == 4 and len(gallery) == 4 and reading.startswith("The model says")
    assert predictions["headers"] == ["label", "probability", "logit"]
    table, _, _, _ = client.predict(example, labels, "a {}", str(latents["data"][0][0]), "1", "scale", "",
                                    api_name="/steer")  # fmt: skip
    assert all(row[1] == row[2] for row in table["data"])
    sweep, _, _ = client.predict(example, labels, "a {}", 3, -1, 3, 5, "scale", "", "logit_difference",
                                 api_name="/sweep")  # fmt: skip
    assert len(sweep["data"]) == 10
    assert {"attribute", "steer", "sweep"} <= set(fake.calls)
    with pytest.raises(Exception, match="not an image that can be read"):  # a user error crosses as gr.Error
        client.predict(handle_file(__file__), labels, "a {}", "", "logit_difference", 4, api_name="/attribute")
    # A preset that could not be preloaded offline says why when chosen; the toy keeps serving.
    with pytest.raises(Exception, match="cannot be used here"):
        client.predict("prisma-vit-b32", api_name="/select_model")
