import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402
import torch  # noqa: E402

from engine.resident import load_workbench  # noqa: E402
from engine.specs import ModelSpec, SAESpec  # noqa: E402
from engine.toyworld import render  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def workbench():
    """The shipped toy model and SAE, resident on the CPU."""
    return load_workbench(ModelSpec.toy(), SAESpec.toy(), "cpu")


@pytest.fixture(scope="session")
def scene_images():
    scenes = render.sample_scenes(6, seed=5)
    return [render.render(s, seed)[0] for s, seed in scenes], [s for s, _ in scenes]


@pytest.fixture(scope="session")
def image(scene_images):
    return scene_images[0][0]


SHAPES = ["circle", "square", "triangle", "cross"]


@contextlib.contextmanager
def suffix_row_counts(workbench):
    """Within the block, the number of rows of every pass through the workbench's suffix, in order."""
    rows_seen = []
    suffix = workbench.backend.suffix

    def counting_suffix(acts_BTD, site):
        rows_seen.append(acts_BTD.shape[0])
        return suffix(acts_BTD, site)

    workbench.backend.suffix = counting_suffix
    try:
        yield rows_seen
    finally:
        workbench.backend.suffix = suffix
