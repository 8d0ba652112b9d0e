"""Named model + SAE pairs: the embedded toy, presets for real models, and the command-line syntax for others.

A model is named as ``FAMILY:ID``:

- ``toy``: the embedded toy-world CLIP (the default);
- ``open_clip:NAME@TAG``: an open_clip model with a pretrained tag (``open_clip:ViT-B-32@openai``) or a local
  weights file as the tag (``open_clip:ViT-B-32@/models/vit_b_32.bin``); ``@random`` gives random weights;
- ``open_clip:hf-hub:ORG/REPO`` and ``open_clip:local-dir:/path``: open_clip's own hub and directory forms;
- ``hf:ID_OR_DIR``: a transformers CLIP or SigLIP, by hub id (``hf:openai/clip-vit-base-patch32``) or a
  directory written by ``save_pretrained``.

An SAE is a local path (file or directory, any supported format) or ``hf:OWNER/REPO[/PATH]``, optionally
followed by ``@SITE`` to name or override the site (``/saes/clip-b16@blocks.10.resid_post``).

>>> parse_model("open_clip:ViT-B-32@openai")
ModelSpec(family='open_clip', name='ViT-B-32', pretrained='openai', prompt_template='a photo of a {}.', default_labels=())
>>> parse_sae("hf:owner/repo/layer_10@blocks.10.resid_post")
SAESpec(path='hf:owner/repo/layer_10', site='blocks.10.resid_post')
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from engine.errors import UnknownChoiceError, UserInputError
from engine.specs import ASSETS, ModelSpec, SAESpec, VLMSpec

LABELS_DIR = ASSETS / "labels"
TOY_EXAMPLES_DIR = ASSETS / "examples"
SITE_SUFFIX = re.compile(r"@(blocks\.\d+\.resid_post)$")


@dataclass(frozen=True)
class Preset:
    """A model with an SAE for it, and where the pair was published (so every id can be checked)."""

    name: str
    model: ModelSpec
    sae: SAESpec
    description: str
    sources: tuple[str, ...] = ()
    label_set: str = "imagenet1k"


def parse_model(text: str) -> ModelSpec:
    """A :class:`ModelSpec` from the command-line syntax in this module's docstring."""
    text = text.strip()
    if text == "toy":
        return ModelSpec.toy()
    family, _, rest = text.partition(":")
    if not rest:
        raise UserInputError(
            f"model {text!r}: expected toy, open_clip:NAME@TAG, open_clip:local-dir:/path or hf:ID_OR_DIR"
        )
    if family == "hf":
        return ModelSpec(family="hf_clip", name=rest)
    if family != "open_clip":
        raise UserInputError(f"model {text!r}: unknown family {family!r}; valid: toy, open_clip, hf")
    if rest.startswith(("local-dir:", "hf-hub:")):
        return ModelSpec(family="open_clip", name=rest)
    name, _, tag = rest.partition("@")
    if not tag:
        raise UserInputError(
            f"model {text!r}: an open_clip model needs a pretrained tag (open_clip:{name}@openai), "
            f"a weights file (open_clip:{name}@/path/weights.bin) or @random"
        )
    return ModelSpec(family="open_clip", name=name, pretrained=None if tag == "random" else tag)


def parse_sae(text: str) -> SAESpec:
    text = text.strip()
    if not text:
        raise UserInputError("empty SAE: give a path or hf:OWNER/REPO[/PATH], optionally with @blocks.N.resid_post")
    match = SITE_SUFFIX.search(text)
    if match:
        return SAESpec(path=text[: match.start()], site=match.group(1))
    return SAESpec(path=text)


@functools.cache
def label_set(name: str) -> tuple[str, ...]:
    """A shipped label list (``assets/labels/NAME.txt``, one label per line), each label once.

    A file may repeat a name (open_clip's ImageNet-1k names have "missile" for classes 657 and 744 and
    "sunglasses" for 836 and 837): two identical prompts get identical logits and would only split the
    probability, so the later copies are dropped, in the file's order (998 ImageNet labels).
    """
    available = label_set_names()
    if name not in available:
        raise UnknownChoiceError("label set", name, available)
    lines = (LABELS_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines()
    return tuple(dict.fromkeys(line.strip() for line in lines if line.strip()))


def label_set_names() -> tuple[str, ...]:
    return tuple(sorted(p.stem for p in LABELS_DIR.glob("*.txt") if p.stem != "concepts"))


def default_labels(chosen: Preset) -> tuple[str, ...]:
    """The labels offered first: the model's own, else the preset's label set."""
    return chosen.model.default_labels or (label_set(chosen.label_set) if chosen.label_set else ())


TOY = Preset(
    name="toy",
    model=ModelSpec.toy(),
    sae=SAESpec.toy(),
    description="the embedded toy world: a small CLIP and a TopK SAE trained here, with ground truth",
    label_set="",
)


@dataclass(frozen=True)
class DiffPreset:
    """Two checkpoints of one architecture and the SAE that reads both (the reference's)."""

    name: str
    reference: ModelSpec
    intervened: ModelSpec
    sae: SAESpec
    description: str


TOY_DIFF = DiffPreset(
    name="toy: planted shortcut",
    reference=ModelSpec.toy(),
    intervened=ModelSpec.toy_shortcut(),
    sae=SAESpec.toy(),
    description=(
        "the toy CLIP against itself fine-tuned with a planted shortcut (the corner marker makes it answer "
        "one fixed shape) and a benign colour drift; both are stated in assets/toy_clip_shortcut/manifest.json"
    ),
)

# Real presets: each id, site and format was read from the sources listed with it (not downloaded here: the
# project's machines have no hub; the Space does). The first source is the SAE's own page.
PRISMA_VIT_B32 = Preset(
    name="prisma-vit-b32",
    model=ModelSpec("open_clip", "hf-hub:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K"),
    sae=SAESpec("hf:Prisma-Multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-10-hook_resid_post-l1-1e-05"),
    description=(
        "ViT-Prisma's ReLU SAE (49,152 latents, all 50 tokens) on the residual stream after block 10 of "
        "LAION's DataComp.XL CLIP ViT-B/32; 98.4% explained variance reported by its authors"
    ),
    sources=(
        "https://huggingface.co/Prisma-Multimodal/sparse-autoencoder-clip-b-32-sae-vanilla-x64-layer-10-hook_resid_post-l1-1e-05",
        "https://github.com/Prisma-Multimodal/ViT-Prisma/blob/main/docs/sae_table.md",
    ),
)
SAEV_VIT_B16 = Preset(
    name="saev-vit-b16",
    model=ModelSpec("open_clip", "ViT-B-16", "openai"),
    sae=SAESpec("hf:osunlp/SAE_CLIP_24K_ViT-B-16_IN1K/sae.pt", site="blocks.10.resid_post"),
    description=(
        "saev's ReLU SAE (24,576 latents, patch tokens) on the residual stream after block 10 (layer -2) of "
        "OpenAI CLIP ViT-B/16, trained on ImageNet-1k. Experimental: saev normalised its inputs by dataset "
        "statistics that are not published with the file, so the explained variance here is lower"
    ),
    sources=(
        "https://huggingface.co/osunlp/SAE_CLIP_24K_ViT-B-16_IN1K",
        "https://github.com/OSU-NLP-Group/saev/blob/main/docs/src/users/inference.md",
    ),
)
PRESETS: dict[str, Preset] = {p.name: p for p in (TOY, PRISMA_VIT_B32, SAEV_VIT_B16)}


@dataclass(frozen=True)
class ExplainPreset:
    """A vision-language model with an SAE at a site of its vision tower (the Explain tab), with where each was
    published and the memory it needs."""

    name: str
    vlm: VLMSpec
    sae: SAESpec
    description: str
    sources: tuple[str, ...] = ()
    memory: str = ""


TOY_EXPLAIN = ExplainPreset(
    name="toy: LLaVA on the toy CLIP",
    vlm=VLMSpec.toy(),
    sae=SAESpec.toy(),
    description=(
        "transformers' LLaVA built on the toy CLIP's vision tower (a small Llama trained on the caption grammar, "
        "engine.toyworld.train_vlm) with the toy SAE at blocks.2.resid_post, the layer LLaVA reads"
    ),
    memory="about 30 MB; a CPU explains a latent in well under a second",
)
# Real pairs (not downloaded here: the project's machines have no hub). Ids, sites and formats as their
# publications give them; the first source is the SAE's own page.
LLAVA_SAE = ExplainPreset(
    name="llava-sae",
    vlm=VLMSpec("llava-hf/llava-1.5-7b-hf"),
    sae=SAESpec("hf:mateuszpach/sae-for-vlm", site="blocks.22.resid_post"),
    description=(
        "LLaVA-1.5 7B with the sae-for-vlm SAE of Pach et al. 2025 (Matryoshka BatchTopK, 64x, k=20) on its CLIP "
        "ViT-L/14-336 at layer 22, the output LLaVA reads (vision_feature_layer=-2)"
    ),
    sources=("https://huggingface.co/mateuszpach/sae-for-vlm", "https://github.com/ExplainableML/sae-for-vlm"),
    memory="about 15 GB in float16 (a GPU with 24 GB); about 28 GB in float32 on a CPU, minutes per explanation",
)
GEMMA3_SAE = ExplainPreset(
    name="gemma3-sae",
    vlm=VLMSpec("google/gemma-3-4b-it"),
    sae=SAESpec("hf:javifer/google_gemma-3-4b-it-saes", site="blocks.16.resid_post"),
    description=(
        "Gemma 3 4B (SigLIP tower) with the dictionary_learning TopK SAEs of Ferrando et al. 2026 (8,192 latents, "
        "k=25; layers 6, 16 and 24 of the tower: name another with @blocks.N.resid_post)"
    ),
    sources=("https://huggingface.co/javifer/google_gemma-3-4b-it-saes", "https://github.com/HPAI-BSC/vision-interp"),
    memory="about 9 GB in bfloat16 (a GPU with 16 GB); about 17 GB in float32 on a CPU",
)
EXPLAIN_PRESETS: dict[str, ExplainPreset] = {p.name: p for p in (TOY_EXPLAIN, LLAVA_SAE, GEMMA3_SAE)}


def explain_preset(name: str) -> ExplainPreset:
    if name not in EXPLAIN_PRESETS:
        raise UnknownChoiceError("explain preset", name, EXPLAIN_PRESETS)
    return EXPLAIN_PRESETS[name]


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UnknownChoiceError("preset", name, PRESETS)
    return PRESETS[name]
