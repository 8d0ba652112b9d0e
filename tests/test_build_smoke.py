"""The asset build runs end to end: the same trainers, a few steps on a tiny config."""

import json

from engine.resident import load_workbench
from engine.sources import AllowedDirs
from engine.specs import ModelSpec, SAESpec
from engine.toyworld import build


def test_tiny_build_produces_loadable_assets(tmp_path):
    build.build(tmp_path, tiny=True)
    clip_manifest = json.loads((tmp_path / "toy_clip" / "manifest.json").read_text())
    sae_manifest = json.loads((tmp_path / "toy_sae" / "manifest.json").read_text())
    assert clip_manifest["command"].startswith("python -m engine.toyworld.build")
    assert set(clip_manifest["metrics"]["zero_shot_accuracy"]) == {
        "shape",
        "colour",
        "texture",
        "size",
        "position",
        "marker",
    }
    assert "explained_variance_heldout" in sae_manifest["metrics"]
    workbench = load_workbench(
        ModelSpec("open_clip", f"local-dir:{tmp_path / 'toy_clip'}", prompt_template="a {}"),
        SAESpec(str(tmp_path / "toy_sae")),
        "cpu",
        allowed=AllowedDirs.default([tmp_path]),
    )
    assert workbench.latent_info is not None and len(workbench.latent_info.labels) == workbench.d_sae
    assert len(list((tmp_path / "examples").glob("*.png"))) == len(build.EXAMPLES)
