"""engine.index against a brute-force reference, across processes and resumes; engine.cards against the index."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from engine import cards, index
from engine.image_sources import ToyImages
from engine.specs import ASSETS

ROOT = Path(__file__).resolve().parent.parent


def brute_force(workbench, source, top_n):
    """Per latent: images sorted by (activation desc, position asc), fired counts, sums, |f| histogram; one image at a
    time, with the SAE module directly (no engine.index code)."""
    backend, sae = workbench.backend, workbench.sae
    maxima, fired_tokens, fired_images, sums, values = [], 0, 0, 0, [[] for _ in range(workbench.d_sae)]
    brute_force.maps_NPS = []  # each image's code on its patches, for the recorded patch maps
    for i in range(len(source)):
        with torch.no_grad():
            acts = backend.prefix(backend.pixels([source.load(i)]), workbench.site)[0]
            f_TS = sae.encode(acts)
        brute_force.maps_NPS.append(f_TS[backend.n_prefix_tokens :])
        maxima.append(f_TS.max(0).values)
        fired_tokens = fired_tokens + (f_TS != 0).sum(0)
        fired_images = fired_images + (f_TS != 0).any(0)
        sums = sums + f_TS.double().sum(0)
        for t, s in (f_TS != 0).nonzero().tolist():
            values[s].append(abs(float(f_TS[t, s])))
    max_NS = torch.stack(maxima)
    top = [
        sorted((-float(max_NS[n, s]), n) for n in range(len(source)) if max_NS[n, s] > 0)[:top_n]
        for s in range(workbench.d_sae)
    ]
    return top, fired_tokens, fired_images, sums, values


def test_index_equals_brute_force(workbench):
    source = ToyImages(24, 11)
    state, manifest = index.build_index(workbench, source, top_n=5, batch_images=7, chunk_images=10)
    top, fired_tokens, fired_images, sums, values = brute_force(workbench, source, 5)
    for s in range(workbench.d_sae):
        ids = [i for i in state.top_images_SN[s].tolist() if i >= 0]
        assert ids == [n for _, n in top[s]], s
        assert np.allclose(state.top_values_SN[s, : len(ids)].numpy(), [-v for v, _ in top[s]], atol=1e-5)
    assert torch.equal(state.fired_tokens_S, fired_tokens) and torch.equal(state.fired_images_S, fired_images.long())
    assert torch.allclose(state.sum_S, sums, rtol=1e-5, atol=1e-4)
    edges = np.concatenate([[0], index.BIN_EDGES.numpy(), [np.inf]])
    for s in range(0, workbench.d_sae, 37):
        assert state.histogram_SB[s].tolist() == np.histogram(values[s], edges)[0].tolist(), s
    assert manifest["counts"]["images"] == 24 and manifest["counts"]["tokens"] == 24 * 37
    assert manifest["patch_maps"] and state.top_maps_SNP.shape == (workbench.d_sae, 5, 36)
    for s in range(workbench.d_sae):  # each top image's map is the latent's code on its patches, in float16
        for j, i in enumerate(state.top_images_SN[s].tolist()):
            expected_P = brute_force.maps_NPS[i][:, s] if i >= 0 else torch.zeros(36)
            torch.testing.assert_close(state.top_maps_SNP[s, j].float(), expected_P, rtol=2**-10, atol=1e-4)


def test_patch_maps_are_optional_and_a_resumed_build_keeps_its_choice(workbench, tmp_path):
    source = ToyImages(20, 14)
    state, manifest = index.build_index(workbench, source, tmp_path / "a", top_n=3, chunk_images=8, patch_maps=False)
    assert state.top_maps_SNP is None and not manifest["patch_maps"]
    assert "top_maps_SNP" not in load_file(str(tmp_path / "a" / index.INDEX_FILE))
    assert index.FeatureIndex(tmp_path / "a").top_maps(0) is None
    index.build_index(workbench, source, tmp_path / "b", top_n=3, chunk_images=8, patch_maps=False, stop_after_chunks=1)
    resumed, _ = index.build_index(workbench, source, tmp_path / "b", top_n=3, chunk_images=8, resume=True)
    assert resumed.top_maps_SNP is None  # the default keeps the stopped build's choice
    with pytest.raises(ValueError, match="another patch_maps"):
        index.build_index(workbench, source, tmp_path / "b", top_n=3, resume=True, patch_maps=True)


def test_a_card_reads_its_heatmaps_from_the_index_and_they_are_the_models(workbench, tmp_path, monkeypatch):
    """With recorded maps a card runs no model; its heatmaps equal those the model gives on the spot (to float16's
    precision), and everything else on the card is the same."""
    index.build_index(workbench, ToyImages(32, 15), tmp_path, top_n=6, batch_images=5, chunk_images=12)
    found = index.FeatureIndex(tmp_path)
    latents = [s for s in range(workbench.d_sae) if len(found.stats(s).top) >= 3][:5]
    assert latents
    computed = {}
    maps = found.state.top_maps_SNP
    found.state.top_maps_SNP = None  # an index without maps: the card runs the model
    for latent in latents:
        computed[latent] = cards.latent_card(workbench, found, latent)
    found.state.top_maps_SNP = maps

    def no_model(*args, **kwargs):
        raise AssertionError("the card ran the model")

    monkeypatch.setattr(workbench, "stream_codes", no_model)
    for latent in latents:
        read, fresh = cards.latent_card(workbench, found, latent), computed[latent]
        assert [(e.position, e.activation, e.patch) for e in read.examples] == [
            (e.position, e.activation, e.patch) for e in fresh.examples
        ]
        for a, b in zip(read.examples, fresh.examples, strict=True):
            assert a.map_HW.shape == b.map_HW.shape == workbench.backend.grid
            np.testing.assert_allclose(a.map_HW, b.map_HW, rtol=2**-10, atol=1e-4)


def test_resumed_build_equals_one_build(workbench, tmp_path):
    source = ToyImages(30, 12)
    straight, _ = index.build_index(workbench, source, tmp_path / "a", top_n=4, chunk_images=8)
    index.build_index(workbench, source, tmp_path / "b", top_n=4, chunk_images=8, stop_after_chunks=2)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["images_done"] == 16
    resumed, manifest = index.build_index(workbench, source, tmp_path / "b", top_n=4, chunk_images=8, resume=True)
    assert manifest["images_done"] == 30 and resumed.n_images == 30
    a, b = load_file(str(tmp_path / "a" / index.INDEX_FILE)), load_file(str(tmp_path / "b" / index.INDEX_FILE))
    for name in a:
        assert torch.allclose(a[name].double(), b[name].double(), atol=1e-6), name
    with pytest.raises(ValueError, match="another top_n"):
        index.build_index(workbench, source, tmp_path / "b", top_n=5, resume=True)


def test_two_processes_build_the_same_index(workbench, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) builds the index that one process builds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    flags = ["--model", "toy", "--sae", "assets/toy_sae", "--data", "toy:40@13", "--top-n", "4", "--chunk-images"]
    flags += ["16", "--batch-images", "5", "--device", "cpu", "--out", str(tmp_path / "two")]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--main_process_port", str(port), "-m", "engine.index", "build"]
    done = subprocess.run([*launch, *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["processes"] == 2
    index.build_index(workbench, ToyImages(40, 13), tmp_path / "one", top_n=4, batch_images=5, chunk_images=16)
    one, two = (load_file(str(tmp_path / d / index.INDEX_FILE)) for d in ("one", "two"))
    assert set(one) == set(two) and "top_maps_SNP" in one
    for name in one:  # patch maps are float16: other batches move a value by at most its last bit
        rtol = 2**-10 if name == "top_maps_SNP" else 1e-5  # torch.allclose's default otherwise
        assert torch.allclose(one[name].double(), two[name].double(), rtol=rtol, atol=1e-5), name


def test_quantiles_from_the_histogram():
    counts = torch.zeros(index.N_BINS, dtype=torch.int64)
    one = int(torch.bucketize(torch.tensor(1.1, dtype=torch.float64), index.BIN_EDGES))  # the bin 1.0 .. 1.33
    counts[one], counts[one + 8] = 90, 10  # 90 values near 1, 10 near 10
    assert 1.0 <= index.histogram_quantile(counts, 0.5) <= 1.34
    assert 1.0 <= index.histogram_quantile(counts, 0.9) <= 1.34
    assert 10.0 <= index.histogram_quantile(counts, 0.95) <= 13.4


def test_shipped_toy_index_fits_the_toy_sae_and_its_cards_agree(workbench):
    found = index.find_index(workbench)
    assert found is not None and found.directory == ASSETS / "toy_index" and found.complete
    assert found.manifest["dataset"] == index.TOY_INDEX_DATASET and found.d_sae == workbench.d_sae
    assert found.manifest["patch_maps"] and found.state.n_patches == 36  # the cards read their heatmaps
    latent = max(range(workbench.d_sae), key=lambda s: float(found.frequency_S[s]))
    card = cards.latent_card(workbench, found, latent, n_examples=6)
    assert len(card.examples) == 6 and card.label == workbench.latent_info.labels[latent]
    for example in card.examples:
        peak = float(example.map_HW.max())
        # the index's value is the maximum over all tokens: the strongest patch, unless the class token is stronger
        # (the map is float16: within its last bit of the value)
        assert peak <= example.activation * (1 + 2**-10) + 1e-4
        if example.patch >= 0:
            assert example.map_HW.flatten()[example.patch] == pytest.approx(peak, abs=1e-5)
            assert peak == pytest.approx(example.activation, rel=2**-10, abs=1e-4) or example.activation > peak
    values = [e.activation for e in card.examples]
    assert values == sorted(values, reverse=True)


def test_card_exports_escape_text_and_are_valid_json(workbench):
    found = index.find_index(workbench)
    card = cards.latent_card(workbench, found, 3, n_examples=2)
    hostile = cards.LatentCard(**{**card.__dict__, "label": '<img src=x onerror="alert(1)">'})
    page = cards.cards_html([hostile])
    assert "<img src=x" not in page and "&lt;img src=x" in page
    assert page.count("data:image/png;base64,") == 2 and "<script" not in page and 'src="http' not in page
    loaded = json.loads(cards.cards_json([card]))["cards"][0]
    assert (
        loaded["latent"] == 3
        and len(loaded["examples"]) == 2
        and loaded["examples"][0]["thumbnail"].startswith("data:")
    )


def test_export_command_writes_html_and_json(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    for suffix in (".html", ".json"):
        out = tmp_path / f"cards{suffix}"
        index.main(["export", "--index", "assets/toy_index", "--latents", "3,10", "--examples", "4", "--out", str(out)])
        text = out.read_text()
        if suffix == ".html":
            assert text.count('<section class="card"') == 2 and text.count("data:image/png;base64,") == 8
        else:
            assert [card["latent"] for card in json.loads(text)["cards"]] == [3, 10]
    with pytest.raises(ValueError, match="within 0 .. 383"):
        index.main(["export", "--index", "assets/toy_index", "--latents", "3,999", "--out", str(tmp_path / "x.html")])


def test_toy_images_are_rendered_once_and_handed_out_as_copies():
    from engine.toyworld import render

    source = ToyImages(6, 21)
    scene, seed = render.sample_scenes(6, 21)[4]
    rendered = np.asarray(render.render(scene, seed)[0])
    first = source.load(4)
    assert np.array_equal(np.asarray(first), rendered)
    first.putpixel((0, 0), (1, 2, 3))  # a caller drawing on its copy changes nobody else's
    assert np.array_equal(np.asarray(source.load(4)), rendered)


def heat_thumbnail_blended_per_pixel(image, map_HW, size):
    """The reference: every pixel blended in float with the red at the patch's opacity (half at the peak)."""
    resample = Image.NEAREST if max(image.size) < size else Image.BICUBIC
    base_HWC = np.asarray(image.convert("RGB").resize((size, size), resample), dtype=np.float32) / 255
    heat_hw = np.clip(map_HW / map_HW.max(), 0, 1) if map_HW.max() > 0 else np.zeros_like(map_HW)
    heat = Image.fromarray((heat_hw * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)
    alpha_HW1 = np.asarray(heat, dtype=np.float32)[..., None] / 255 * 0.5
    red = np.array([1.0, 0.1, 0.1], dtype=np.float32)
    return ((base_HWC * (1 - alpha_HW1) + red * alpha_HW1) * 255).round()


@pytest.mark.parametrize("side", [48, 224])
def test_a_card_thumbnail_is_the_per_pixel_blend_within_one_level(side):
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
    map_HW = rng.random((7, 7)).astype(np.float32)
    out = np.asarray(cards.heat_thumbnail(image, map_HW, 140), dtype=np.float32)
    size = {48: 96, 224: 140}[side]  # pixel art: the largest whole factor that fits (2); a photograph: 140
    assert out.shape == (size, size, 3) and cards.thumbnail_px(image, 140) == size
    outline = np.zeros((size, size), bool)
    r, c = divmod(int(map_HW.argmax()), 7)
    outline[r * size // 7 : (r + 1) * size // 7, c * size // 7 : (c + 1) * size // 7] = True  # outlined in yellow
    assert np.abs(out - heat_thumbnail_blended_per_pixel(image, map_HW, size))[~outline].max() <= 1


def test_a_pixel_art_thumbnail_gives_every_source_pixel_one_square():
    rng = np.random.default_rng(4)
    image = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    out = np.asarray(cards.heat_thumbnail(image, np.zeros((8, 8), np.float32), 160))  # no heat: the image itself
    assert out.shape == (144, 144, 3)  # 3 x 48, not 160 (3.33 x: squares of 3 and 4 px)
    assert np.array_equal(out, np.asarray(image).repeat(3, axis=0).repeat(3, axis=1))
