"""The shipped label vocabularies and example photographs for real CLIP models (scripts/make_label_assets.py)."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
LABELS = ROOT / "assets" / "labels"
PHOTOS = ROOT / "assets" / "photos"


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("make_label_assets", ROOT / "scripts" / "make_label_assets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_imagenet1k_is_open_clips_list():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = _lines(LABELS / "imagenet1k.txt")
    assert len(names) == 1000
    assert all(n and n == n.strip() for n in names)
    assert names == list(IMAGENET_CLASSNAMES)
    # open_clip's cleaned names repeat two labels ("missile": classes 657/744, "sunglasses": 836/837).
    prov = json.loads((LABELS / "provenance.json").read_text())["files"]["imagenet1k.txt"]
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert repeated == prov["repeated_names"] == ["missile", "sunglasses"]
    assert len(set(names)) == prov["distinct"] == 998


def test_concepts_vocabulary(generator):
    concepts = _lines(LABELS / "concepts.txt")
    assert all(c and c == c.lower() and c == " ".join(c.split()) for c in concepts)
    assert len(concepts) == len(set(concepts))
    assert len(concepts) <= 5000
    have = set(concepts)
    assert len(generator.DTD_CATEGORIES) == 47
    assert set(generator.DTD_CATEGORIES) <= have
    assert {n.lower() for n in _lines(LABELS / "imagenet1k.txt")} <= have
    assert set(generator.BERLIN_KAY_COLOURS) <= have

    prov = json.loads((LABELS / "provenance.json").read_text())["files"]["concepts.txt"]
    assert prov["lines"] == len(concepts)
    assert sum(s["added_to_concepts"] for s in prov["sources"]) == len(concepts)
    assert all(s["citation"] and s["source"] and s["count"] > 0 for s in prov["sources"])


def test_labels_regenerate_identically(generator, tmp_path):
    generator.make_labels(tmp_path)
    for name in ("imagenet1k.txt", "concepts.txt", "provenance.json"):
        assert (tmp_path / "labels" / name).read_bytes() == (LABELS / name).read_bytes(), name


def test_photos_have_provenance_and_open_clean():
    prov = json.loads((PHOTOS / "provenance.json").read_text())["files"]
    shipped = sorted(p.name for p in PHOTOS.iterdir() if p.name != "provenance.json")
    assert 4 <= len(shipped) <= 6
    assert shipped == sorted(prov)
    for name in shipped:
        entry = prov[name]
        path = PHOTOS / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], name
        assert entry["licence"] in {"public domain", "CC0"}, name
        doc = entry["package_documentation"].lower()
        assert "public domain" in doc or "cc0" in doc, name
        assert entry["package"] == "scikit-image" and entry["package_version"] and entry["original_file"]
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "RGB", name
            assert max(im.size) <= 512, name
