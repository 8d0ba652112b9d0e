"""Regenerate the label vocabularies and example photographs that the app ships for real CLIP models.

Writes, under assets/ (or --out-dir):

  labels/imagenet1k.txt     the 1000 ImageNet-1k class names, one per line in class-index order, exactly
                            open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES (the cleaned CLIP zero-shot names;
                            two names repeat there: "missile" (657, 744) and "sunglasses" (836, 837), so the file
                            has 998 distinct lines)
  labels/concepts.txt       a concept vocabulary for naming SAE latents: the ImageNet names, the 47 DTD texture
                            categories, basic colour terms and material categories, normalised (lower case, single
                            spaces) and deduplicated in first-seen source order
  labels/provenance.json    every source of the two files above, with citations and counts
  photos/*.jpg              (only with --skimage) public-domain / CC0 photographs from scikit-image's sample data,
  photos/provenance.json    converted to RGB JPEG (quality 90, longest side <= 512 px), with licence and sha256

Run from the repository root with the project venv (open_clip must be installed):

  .venv/bin/python scripts/make_label_assets.py
  .venv/bin/pip download scikit-image==0.26.0 --no-deps -d /tmp/skw
  .venv/bin/python scripts/make_label_assets.py --skimage /tmp/skw/scikit_image-0.26.0-*.whl

--skimage takes the scikit-image wheel itself or a directory it was extracted to (one that holds skimage/data/).
scikit-image is only read as an archive, never imported and never a project requirement. The output is
deterministic: the same open_clip, scikit-image and Pillow versions give byte-identical files.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import re
import sys
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Describable Textures Dataset: the 47 categories (the dataset's folder names), from
# M. Cimpoi, S. Maji, I. Kokkinos, S. Mohamed, A. Vedaldi, "Describing Textures in the Wild", CVPR 2014.
# No installed package ships this list (torchvision's DTD class reads it from the downloaded archive).
DTD_CATEGORIES = (
    "banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched",
    "crystalline", "dotted", "fibrous", "flecked", "freckled", "frilly", "gauzy", "grid", "grooved", "honeycombed",
    "interlaced", "knitted", "lacelike", "lined", "marbled", "matted", "meshed", "paisley", "perforated", "pitted",
    "pleated", "polka-dotted", "porous", "potholed", "scaly", "smeared", "spiralled", "sprinkled", "stained",
    "stratified", "striped", "studded", "swirly", "veined", "waffled", "woven", "wrinkled", "zigzagged",
)  # fmt: skip

# The eleven basic colour terms of English, B. Berlin and P. Kay, "Basic Color Terms: Their Universality and
# Evolution", University of California Press, 1969.
BERLIN_KAY_COLOURS = (
    "white", "black", "red", "green", "yellow", "blue", "brown", "purple", "pink", "orange", "grey",
)  # fmt: skip

# The sixteen basic colour keywords of W3C "CSS Color Module Level 3" (section 4.1, the HTML 4 colour names);
# checked against Pillow's PIL.ImageColor.colormap, which ships them.
CSS_BASIC_COLOUR_KEYWORDS = (
    "black", "silver", "gray", "white", "maroon", "red", "purple", "fuchsia",
    "green", "lime", "olive", "yellow", "navy", "blue", "teal", "aqua",
)  # fmt: skip

# The ten material categories of the Flickr Material Database, L. Sharan, R. Rosenholtz, E. H. Adelson,
# "Material perception: What can you see in a brief glance?", Journal of Vision 9(8):784, 2009.
FMD_MATERIALS = ("fabric", "foliage", "glass", "leather", "metal", "paper", "plastic", "stone", "water", "wood")

# scikit-image sample images taken as example photographs: only those whose docstring in
# skimage/data/_fetchers.py states public domain or CC0. `licence` and `author` are our short summary;
# `must_say` are phrases that must appear in that docstring (the script stops if they do not), and the
# docstring's own notes are copied verbatim into provenance.json.
PHOTOS = (
    {
        "file": "astronaut.png",
        "function": "astronaut",
        "licence": "public domain",
        "author": "NASA (NASA Great Images database); photograph of astronaut Eileen Collins",
        "must_say": ("released into the public domain", "NASA Great Images database"),
    },
    {
        "file": "chelsea.png",
        "function": "chelsea",
        "licence": "CC0",
        "author": "Stefan van der Walt (photographer)",
        "must_say": ("CC0 by the photographer (Stefan van der Walt)",),
    },
    {
        "file": "coffee.png",
        "function": "coffee",
        "licence": "CC0",
        "author": "Rachel Michetti (photographer); courtesy of Pikolo Espresso Bar",
        "must_say": ("CC0 by the photographer (Rachel Michetti)",),
    },
    {
        "file": "rocket.jpg",
        "function": "rocket",
        "licence": "public domain",
        "author": "SpaceX (SpaceX Photos on Flickr); launch of DSCOVR on Falcon 9",
        "must_say": ("captured by SpaceX", "released in the public domain"),
    },
    {
        "file": "hubble_deep_field.jpg",
        "function": "hubble_deep_field",
        "licence": "public domain",
        "author": "NASA (HubbleSite); Hubble eXtreme Deep Field",
        "must_say": ("captured by NASA", "freely used in the public domain"),
    },
)
MAX_SIDE = 512
JPEG_QUALITY = 90


def normalise(name: str) -> str:
    """One concept as written to concepts.txt: lower case, single spaces."""
    return " ".join(name.lower().split())


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def make_labels(out_dir: Path) -> dict:
    import open_clip
    from open_clip import zero_shot_metadata
    from PIL import ImageColor

    imagenet = list(zero_shot_metadata.IMAGENET_CLASSNAMES)
    assert len(imagenet) == 1000 and all(n.strip() == n and n for n in imagenet)
    repeated = sorted({n for n in imagenet if imagenet.count(n) > 1})
    missing_css = [c for c in CSS_BASIC_COLOUR_KEYWORDS if c not in ImageColor.colormap]
    assert not missing_css, f"not in PIL.ImageColor.colormap: {missing_css}"
    assert len(DTD_CATEGORIES) == 47 == len(set(DTD_CATEGORIES))

    oc_version = metadata.version("open_clip_torch")
    pil_version = metadata.version("pillow")
    sources = [
        {
            "id": "imagenet1k",
            "names": imagenet,
            "source": f"open_clip_torch {oc_version}: open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES",
            "citation": "ImageNet-1k (Russakovsky et al., IJCV 2015) class names as cleaned for CLIP zero-shot "
            "(Radford et al., 2021), as shipped by open_clip",
        },
        {
            "id": "dtd",
            "names": list(DTD_CATEGORIES),
            "source": "written in scripts/make_label_assets.py (no installed package ships the list)",
            "citation": "M. Cimpoi, S. Maji, I. Kokkinos, S. Mohamed, A. Vedaldi, 'Describing Textures in the Wild', "
            "CVPR 2014 (Describable Textures Dataset, 47 categories)",
        },
        {
            "id": "colours_berlin_kay",
            "names": list(BERLIN_KAY_COLOURS),
            "source": "written in scripts/make_label_assets.py",
            "citation": "B. Berlin, P. Kay, 'Basic Color Terms: Their Universality and Evolution', "
            "University of California Press, 1969 (the 11 basic colour terms of English)",
        },
        {
            "id": "colours_css_basic",
            "names": list(CSS_BASIC_COLOUR_KEYWORDS),
            "source": f"written in scripts/make_label_assets.py; each checked present in pillow {pil_version} "
            "PIL.ImageColor.colormap",
            "citation": "W3C, 'CSS Color Module Level 3', section 4.1 Basic color keywords (16 keywords)",
        },
        {
            "id": "materials_fmd",
            "names": list(FMD_MATERIALS),
            "source": "written in scripts/make_label_assets.py",
            "citation": "L. Sharan, R. Rosenholtz, E. H. Adelson, 'Material perception: What can you see in a "
            "brief glance?', Journal of Vision 9(8):784, 2009 (Flickr Material Database, 10 categories)",
        },
    ]

    concepts: list[str] = []
    seen: set[str] = set()
    for src in sources:
        added = 0
        for name in src["names"]:
            c = normalise(name)
            if c and c not in seen:
                seen.add(c)
                concepts.append(c)
                added += 1
        src["count"] = len(src["names"])
        src["added_to_concepts"] = added

    labels_dir = out_dir / "labels"
    _write_text(labels_dir / "imagenet1k.txt", "".join(n + "\n" for n in imagenet))
    _write_text(labels_dir / "concepts.txt", "".join(c + "\n" for c in concepts))
    provenance = {
        "generator": "scripts/make_label_assets.py",
        "files": {
            "imagenet1k.txt": {
                "lines": len(imagenet),
                "distinct": len(set(imagenet)),
                "repeated_names": repeated,
                "order": "ImageNet-1k class index 0..999",
                "source": sources[0]["source"],
                "citation": sources[0]["citation"],
                "licence": f"open_clip_torch {open_clip.__version__} is MIT-licensed (its dist-info METADATA: License: MIT)",
            },
            "concepts.txt": {
                "lines": len(concepts),
                "normalisation": "lower case, whitespace collapsed to single spaces, deduplicated keeping the "
                "first occurrence, in the source order below",
                "sources": [{k: v for k, v in s.items() if k != "names"} for s in sources],
            },
        },
        "not_included": {
            "cifar10": "open_clip 3.3.0 ships no CIFAR-10 names (zero_shot_metadata has ImageNet only), and no "
            "installed package ships them (torchvision reads them from the downloaded archive)",
            "cifar100": "no installed package ships the CIFAR-100 class names",
            "scenes": "no installed package ships a citable scene vocabulary (e.g. SUN397 or Places365 names)",
        },
    }
    _write_json(labels_dir / "provenance.json", provenance)
    return provenance


class _SkimageSource:
    """scikit-image's data files, read from the wheel (a zip) or from a directory it was extracted to."""

    def __init__(self, path: Path):
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None
        if self.zip is None:
            roots = [p for p in (path, path.parent, path.parent.parent) if (p / "skimage" / "data").is_dir()]
            if not roots:
                raise SystemExit(f"no skimage/data/ under {path}")
            self.root = roots[0]

    def read(self, rel: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(rel)
        return (self.root / rel).read_bytes()

    def names(self) -> list[str]:
        if self.zip is not None:
            return sorted(self.zip.namelist())
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob("*.dist-info/*"))

    def version(self) -> str:
        for n in self.names():
            if re.fullmatch(r"scikit_image-[^/]+\.dist-info/METADATA", n):
                m = re.search(r"^Version: (\S+)$", self.read(n).decode("utf-8"), re.M)
                if m:
                    return m.group(1)
        init = self.read("skimage/__init__.py").decode("utf-8")
        m = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", init, re.M)
        if not m:
            raise SystemExit("cannot tell the scikit-image version")
        return m.group(1)


def _docstrings(fetchers_py: str) -> dict[str, str]:
    tree = ast.parse(fetchers_py)
    return {f.name: ast.get_docstring(f) or "" for f in tree.body if isinstance(f, ast.FunctionDef)}


def _doc_notes(doc: str) -> str:
    """The docstring without its Returns section, whitespace collapsed: the package's own words on the image."""
    doc = re.split(r"\n\s*Returns\n\s*-+\n", doc)[0]
    doc = re.split(r"\n\s*\.\. versionchanged", doc)[0]
    doc = re.sub(r"^\s*Notes\n\s*-+$", "", doc, flags=re.M)
    return " ".join(doc.split())


def make_photos(out_dir: Path, skimage_path: Path) -> dict:
    from PIL import Image

    src = _SkimageSource(skimage_path)
    version = src.version()
    docs = _docstrings(src.read("skimage/data/_fetchers.py").decode("utf-8"))
    photos_dir = out_dir / "photos"
    photos_dir.mkdir(parents=True, exist_ok=True)
    for old in photos_dir.glob("*.jpg"):
        old.unlink()

    entries = {}
    for spec in PHOTOS:
        notes = _doc_notes(docs[spec["function"]])
        for phrase in spec["must_say"]:
            if phrase not in notes:
                raise SystemExit(f"{spec['file']}: scikit-image {version} no longer says {phrase!r}: {notes}")
        raw = src.read(f"skimage/data/{spec['file']}")
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            orig_size = im.size
            orig_mode = im.mode
            rgb = im.convert("RGB")
        scale = min(1.0, MAX_SIDE / max(rgb.size))
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        if size != rgb.size:
            rgb = rgb.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
        data = buf.getvalue()
        out_name = Path(spec["file"]).stem + ".jpg"
        (photos_dir / out_name).write_bytes(data)
        entries[out_name] = {
            "original_file": f"skimage/data/{spec['file']}",
            "package": "scikit-image",
            "package_version": version,
            "loader": f"skimage.data.{spec['function']}()",
            "licence": spec["licence"],
            "author": spec["author"],
            "package_documentation": notes,
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "conversion": f"{orig_mode} {orig_size[0]}x{orig_size[1]} -> RGB"
            + (f", Lanczos resize to {size[0]}x{size[1]}" if size != orig_size else ", no resize")
            + f", JPEG quality {JPEG_QUALITY} with Pillow {metadata.version('pillow')}",
        }
    provenance = {
        "generator": "scripts/make_label_assets.py --skimage <scikit-image wheel or extracted directory>",
        "source_note": "scikit-image ships these sample images in skimage/data/; the licence and author of each are "
        "stated in the docstring of its loader in skimage/data/_fetchers.py (copied in package_documentation). "
        "Only images stated to be public domain or CC0 were taken.",
        "files": entries,
    }
    _write_json(photos_dir / "provenance.json", provenance)
    return provenance


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "assets", help="where labels/ and photos/ go")
    ap.add_argument("--skimage", type=Path, help="scikit-image wheel (.whl) or extracted directory: also make photos/")
    args = ap.parse_args(argv)
    labels = make_labels(args.out_dir)
    print(f"labels: {labels['files']['concepts.txt']['lines']} concepts, imagenet1k 1000 names")
    if args.skimage:
        photos = make_photos(args.out_dir, args.skimage)
        print(f"photos: {', '.join(photos['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
