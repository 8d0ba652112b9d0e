"""The Latents tab's handlers (ui/latents_tab.py) on the toy model and its shipped index."""

import json
from pathlib import Path

import pytest

from engine import index
from engine.bench import random_sae
from engine.image_sources import ToyImages
from engine.resident import load_workbench
from engine.sources import AllowedDirs
from engine.specs import ModelSpec, SAESpec
from ui import latents_tab
from ui.common import ModelContext


@pytest.fixture(scope="module")
def ctx(workbench):
    return ModelContext(workbench)


def test_browse_searches_labels_sorts_and_pages(ctx, workbench):
    table, status, page = latents_tab.browse_latents(ctx, "colour=red", "frequency (most first)", 1)
    frame = table.frame
    assert len(frame) and all("colour=red" in label for label in frame["label"])
    assert list(frame["frequency"]) == sorted(frame["frequency"], reverse=True)
    expected = sum(label == "colour=red" for label in workbench.latent_info.labels)
    assert f"{expected} latents" in status and page == 1
    table, status, page = latents_tab.browse_latents(ctx, "", "latent id", 99)  # clamped to the last page
    assert page == 8 and list(table.frame["latent"]) == list(range(350, 384))
    with pytest.raises(ValueError, match="valid: frequency"):
        latents_tab.browse_latents(ctx, "", "random", 1)


def test_card_shows_top_images_and_a_histogram_of_every_activation(ctx, workbench):
    gallery, summary, histogram = latents_tab.latent_card(ctx, "3")
    found = index.find_index(workbench)
    assert len(gallery) == 16 and workbench.latent_info.labels[3] in summary
    assert histogram["count"].sum() == int(found.state.fired_tokens_S[3])  # every non-zero activation, binned
    assert [caption.split(" · ")[1].split(" ")[0] for _, caption in gallery][:3] == [
        f"#{i}" for i in found.state.top_images_SN[3, :3].tolist()
    ]
    with pytest.raises(ValueError, match="0 .. 383"):
        latents_tab.latent_card(ctx, "abc")


def test_export_html_and_json(ctx):
    page = Path(latents_tab.export_cards(ctx, "3, 10", "", "html")).read_text()
    assert page.count('<section class="card"') == 2
    cards = json.loads(Path(latents_tab.export_cards(ctx, "", "53", "json")).read_text())["cards"]
    assert [c["latent"] for c in cards] == [53]
    with pytest.raises(ValueError, match="at most 64"):
        latents_tab.export_cards(ctx, ",".join(map(str, range(65))), "", "html")


def test_an_sae_without_index_gets_the_command_that_builds_one(tmp_path):
    random_sae(96, 192, 8, "blocks.2.resid_post").save(tmp_path)
    workbench = load_workbench(ModelSpec.toy(), SAESpec(str(tmp_path)), "cpu", allowed=AllowedDirs.default([tmp_path]))
    assert index.find_index(workbench) is None
    with pytest.raises(ValueError, match="python -m engine.index build"):
        latents_tab.latent_card(ModelContext(workbench), "3")
    # built into feature_index/ beside the SAE, it is found (its files do not change the SAE's fingerprint)
    index.build_index(workbench, ToyImages(12, 3), tmp_path / "feature_index", top_n=3)
    assert index.find_index(workbench).directory == tmp_path / "feature_index"
    gallery, summary, _ = latents_tab.latent_card(ModelContext(workbench), "5")
    assert len(gallery) <= 3 and "latent 5" in summary
