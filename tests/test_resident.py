"""Resident parts by key: loads never block other models, hooks hold the model's lock, caches key by content,
and many requests at once give exactly what they give one at a time."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine import resident, steering
from engine.bench import random_sae
from engine.edits import Edit
from engine.resident import KeyedCache, image_key, load_workbench
from engine.sources import AllowedDirs
from engine.specs import ModelSpec, SAESpec

from .conftest import SHAPES

ROOT = Path(__file__).resolve().parent.parent


def test_a_cached_look_up_never_waits_for_another_keys_load():
    cache: KeyedCache[str, str] = KeyedCache()
    cache.get("toy", lambda: "resident")
    loading = threading.Event()

    def slow_load():
        loading.set()
        time.sleep(2.0)
        return "big"

    worker = threading.Thread(target=cache.get, args=("big", slow_load))
    worker.start()
    assert loading.wait(5)
    start = time.perf_counter()
    assert cache.get("toy", lambda: pytest.fail("loaded twice")) == "resident"
    assert time.perf_counter() - start < 0.1
    worker.join()
    assert cache.get("big", lambda: pytest.fail("loaded twice")) == "big"


def test_concurrent_first_look_ups_of_one_key_load_it_once():
    cache: KeyedCache[str, object] = KeyedCache()
    calls = []

    def load():
        calls.append(1)
        time.sleep(0.2)
        return object()

    with ThreadPoolExecutor(6) as pool:
        values = list(pool.map(lambda _: cache.get("k", load), range(6)))
    assert len(calls) == 1 and all(v is values[0] for v in values)


def test_a_failed_load_is_not_remembered():
    cache: KeyedCache[str, int] = KeyedCache()
    with pytest.raises(RuntimeError):
        cache.get("k", lambda: (_ for _ in ()).throw(RuntimeError("not yet")))
    assert cache.get("k", lambda: 3) == 3


def test_a_request_on_the_toy_is_answered_while_another_model_loads(workbench, image, monkeypatch):
    """The whole path: load_workbench for a slow model holds only that model's lock."""
    real_model = resident.ResidentModel
    loading = threading.Event()

    class SlowModel(real_model):
        def __init__(self, *args, **kwargs):
            loading.set()
            time.sleep(3.0)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(resident, "ResidentModel", SlowModel)
    slow_spec = ModelSpec("open_clip", "ViT-B-32", prompt_template="slow {}")  # a key nobody loaded yet
    outcome = []

    def load_slow():
        try:
            load_workbench(slow_spec, SAESpec.toy(), "cpu")
        except ValueError as error:  # the toy SAE does not fit ViT-B-32's width: refused after the load
            outcome.append(error)

    worker = threading.Thread(target=load_slow)
    worker.start()
    assert loading.wait(10)
    start = time.perf_counter()
    toy = load_workbench(ModelSpec.toy(), SAESpec.toy(), "cpu")
    steering.steer(toy, image, SHAPES, Edit((1,), (0.0,)))
    waited = time.perf_counter() - start
    worker.join()
    assert toy is workbench and waited < 2.0, waited
    assert outcome and "d_in=96" in str(outcome[0])


def test_hooks_hold_the_models_lock(workbench, image):
    """While one request has a hook attached, another request's forward on that model waits for it."""
    seen = []
    inside = threading.Event()
    release = threading.Event()

    def run_other():
        inside.wait(5)
        workbench.clear_cache()
        seen.append(("other", workbench.predict([image], SHAPES)))

    other = threading.Thread(target=run_other)
    other.start()
    module = workbench.backend.site_module(workbench.site)
    with workbench.model.hooked([(module, lambda m, i, o: o * 0)]):
        inside.set()
        release.wait(0.5)  # the other request had time to try
        seen.append(("hooked", None))
    other.join()
    assert [name for name, _ in seen] == ["hooked", "other"]
    torch.testing.assert_close(seen[1][1], workbench.predict([image], SHAPES))  # computed without the hook
    assert not module._forward_hooks


def test_palette_images_with_different_palettes_are_different_pictures():
    indices = Image.new("P", (8, 8), 0)
    red, blue = indices.copy(), indices.copy()
    red.putpalette([255, 0, 0] * 256)
    blue.putpalette([0, 0, 255] * 256)
    assert red.tobytes() == blue.tobytes()
    assert image_key(red) != image_key(blue)
    assert image_key(red) == image_key(red.copy())


def test_two_sites_and_two_saes_share_one_resident_model(workbench, tmp_path):
    random_sae(96, 192, 4, "blocks.1.resid_post", seed=9).save(tmp_path)
    other = load_workbench(ModelSpec.toy(), SAESpec(str(tmp_path)), "cpu", allowed=AllowedDirs.default([tmp_path]))
    assert other.model is workbench.model and other.site == "blocks.1.resid_post" != workbench.site
    assert other.lock is workbench.lock


def test_concurrent_requests_equal_sequential_ones_across_models(workbench, scene_images, tmp_path):
    """Sequential and concurrent runs, each from empty activation caches, interleaving the toy and a real
    architecture (open_clip ViT-B-32, random weights), give identical numbers."""
    random_sae(768, 1024, 8, "blocks.6.resid_post", seed=2).save(tmp_path)
    vit = load_workbench(
        ModelSpec("open_clip", "ViT-B-32"), SAESpec(str(tmp_path)), "cpu", allowed=AllowedDirs.default([tmp_path])
    )
    images, _ = scene_images
    jobs = []
    for i in range(12):
        bench_ = (workbench, vit)[i % 2]
        image = images[i % len(images)]
        edit = Edit((i % 7, 10 + i), (0.0, 2.0)) if i % 3 else Edit((i,), (1.5,), "add", (0, 3))
        jobs.append((bench_, image, edit))

    def run(job):
        bench_, image, edit = job
        return steering.steer(bench_, image, SHAPES, edit)["logits_after"]

    for bench_ in (workbench, vit):
        bench_.clear_cache()
    sequential = [run(job) for job in jobs]
    for bench_ in (workbench, vit):
        bench_.clear_cache()
    with ThreadPoolExecutor(6) as pool:
        concurrent = list(pool.map(run, jobs))
    assert concurrent == sequential
    assert len({tuple(r) for r in sequential}) > 6  # the jobs differ: the comparison is not trivially equal


def test_the_engine_never_imports_gradio():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "engine").rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name.removesuffix('.__init__'))\n"
        "assert 'gradio' not in sys.modules, 'gradio was imported'\n"
        "print(len(sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
