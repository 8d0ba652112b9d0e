"""Frozen, hashable specifications of what the engine loads: a model and an SAE.

They are the keys of the resident caches (one loaded model per spec), so two requests that name the same
model share it, and a spec can be written into a manifest or a URL and read back.

>>> ModelSpec.toy().family
'open_clip'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOY_CLIP_DIR = ASSETS / "toy_clip"
TOY_SAE_DIR = ASSETS / "toy_sae"
TOY_SHORTCUT_DIR = ASSETS / "toy_clip_shortcut"  # the toy CLIP fine-tuned with a planted shortcut (Diff tab)
TOY_VLM_DIR = ASSETS / "toy_vlm"  # the toy LLaVA: the toy CLIP's tower, a projector and a small Llama (Explain tab)
PHOTOS_DIR = ASSETS / "photos"  # licensed photographs: examples, and the reference set for statistics

MODEL_FAMILIES = ("open_clip", "hf_clip")


@dataclass(frozen=True)
class ModelSpec:
    """A CLIP-style model: ``family`` picks the backend, ``name`` and ``pretrained`` are the family's own ids.

    For open_clip, ``name`` is a model name ("ViT-B-32") with ``pretrained`` a tag or a file, or
    ``local-dir:/path`` holding ``open_clip_config.json`` and weights (how the toy model ships).
    For hf_clip (transformers CLIP and SigLIP), ``name`` is a hub id ("openai/clip-vit-base-patch32") or a
    local directory written by ``save_pretrained``; ``pretrained`` is unused.
    """

    family: str
    name: str
    pretrained: str | None = None
    prompt_template: str = "a photo of a {}."
    default_labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in MODEL_FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; valid: {', '.join(MODEL_FAMILIES)}")
        if "{}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}' where the label goes; got {self.prompt_template!r}")

    @classmethod
    def toy(cls) -> ModelSpec:
        return cls(
            family="open_clip",
            name=f"local-dir:{TOY_CLIP_DIR}",
            prompt_template="a {}",
            default_labels=("circle", "square", "triangle", "cross"),
        )

    @classmethod
    def toy_shortcut(cls) -> ModelSpec:
        """The toy CLIP fine-tuned with a planted shortcut (engine.toyworld.train_shortcut)."""
        toy = cls.toy()
        return cls(toy.family, f"local-dir:{TOY_SHORTCUT_DIR}", None, toy.prompt_template, toy.default_labels)

    @property
    def display_name(self) -> str:
        if self.name.startswith("local-dir:") and Path(self.name[10:]) == TOY_CLIP_DIR:
            return "toy CLIP (embedded)"
        if self.name.startswith("local-dir:") and Path(self.name[10:]) == TOY_SHORTCUT_DIR:
            return "toy CLIP fine-tuned with a planted shortcut (embedded)"
        return self.name if self.pretrained is None else f"{self.name} ({self.pretrained})"


@dataclass(frozen=True)
class SAESpec:
    """An SAE: a local file or directory in any supported format, or ``hf:OWNER/REPO[/PATH]`` on the hub.

    ``site`` overrides the site that the file names (or supplies it where the format does not record it).
    """

    path: str
    site: str | None = None

    @classmethod
    def toy(cls) -> SAESpec:
        return cls(path=str(TOY_SAE_DIR))

    @property
    def display_name(self) -> str:
        if Path(self.path) == TOY_SAE_DIR:
            return "toy SAE (embedded)"
        return self.path if self.site is None else f"{self.path} @ {self.site}"


@dataclass(frozen=True)
class VLMSpec:
    """A transformers image-text-to-text model: a hub id ("llava-hf/llava-1.5-7b-hf") or a directory written by
    ``save_pretrained`` (model and processor)."""

    name: str

    @classmethod
    def toy(cls) -> VLMSpec:
        return cls(str(TOY_VLM_DIR))

    @property
    def is_local(self) -> bool:
        return self.name.startswith(("/", ".", "~")) or Path(self.name).expanduser().is_dir()

    @property
    def display_name(self) -> str:
        return "toy LLaVA (embedded)" if Path(self.name) == TOY_VLM_DIR else self.name
