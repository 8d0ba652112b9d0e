"""transformers backend: a CLIP or SigLIP vision tower split at a residual-stream site.

Sites are ``blocks.{i}.resid_post``: the output of vision encoder layer ``i``, which is what transformers
returns as ``hidden_states[i + 1]`` (``hidden_states[0]`` is the layers' input). The split follows the
model's own forward, module by module:

    CLIP:    embeddings (class token + patches) -> pre_layrnorm -> layers 0..i  |  layers i+1.. ->
             post_layernorm(class token) -> visual_projection
    SigLIP:  embeddings (patches only) -> layers 0..i  |  layers i+1.. -> post_layernorm (every token) ->
             attention-pooling head (a learned probe attends over the patches)

``prefix`` is the left of the bar, ``suffix`` the right, so ``suffix(prefix(x))`` equals
``get_image_features(x)`` and a sweep or an attribution never recomputes the prefix. The vision encoder
calls each layer as ``layer(hidden_states, None)``: images have no padding, so there is no attention mask,
and the split calls the layers the same way. SigLIP has no class token (``n_prefix_tokens = 0``): every
token is a patch, and an edit "on all tokens" edits only patches.

Preprocessing and tokenizer are the checkpoint's own (``AutoImageProcessor``, ``AutoTokenizer``). SigLIP
text is padded to the full context length without an attention mask, as it was trained (its text pooling
reads the last position). SigLIP 2 "NaFlex" checkpoints (``model_type`` siglip2: variable resolution,
patch masks) do not fit a fixed patch grid and are refused; fixed-resolution checkpoints that declare
``model_type`` siglip work.

Loading never hangs offline: a local directory or the local Hugging Face cache is tried first, the hub only
through :func:`engine.sources.hub_guard` (skipped when ``HF_HUB_OFFLINE`` is set or the hub's host does not
answer within seconds). Otherwise :class:`ModelUnavailableError` says how to provide the files.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel, SiglipModel

from engine.backends import ResidualSites
from engine.errors import ModelUnavailableError
from engine.sources import load_pretrained
from engine.specs import ModelSpec

MODEL_CLASSES = {"clip": CLIPModel, "siglip": SiglipModel}
MIN_VOCABULARY = 1000  # a real CLIP/SigLIP vocabulary has 32k-250k tokens; a stub has a handful
PROBE_SENTENCE = "a photo of a cat."


class HFClipBackend(ResidualSites):
    def __init__(self, spec: ModelSpec, device: torch.device):
        self.spec = spec
        self.device = device
        model, self.tokenizer, self.image_processor = _load(spec.name)
        self.model = model.to(device).eval().requires_grad_(False)
        self.kind = model.config.model_type
        self.vision = self.model.vision_model
        self.layers = self.vision.encoder.layers
        self.n_blocks = len(self.layers)
        vision_config = model.config.vision_config
        side = vision_config.image_size // vision_config.patch_size
        self.grid = (side, side)
        self.n_prefix_tokens = 1 if self.kind == "clip" else 0
        self.d_model = vision_config.hidden_size
        self.context_length = model.config.text_config.max_position_embeddings
        if self.kind == "siglip" and not self.vision.use_head:
            raise ModelUnavailableError(f"{spec.name}: a SigLIP vision tower without its pooling head is not supported")
        _check_tokenizer(self.tokenizer, spec.name)
        # Read once in float32: the workbench may cast the model to bfloat16 later, which would round it.
        # SigLIP's logits are scale * cos + bias with one scalar bias shared by every label: it shifts all
        # logits of an image equally, so softmax, argmax and logit differences are unchanged without it.
        scale = self.model.logit_scale.exp()
        self._logit_scale = float(scale if self.kind == "siglip" else scale.clamp(max=100))

    def site_module(self, site: str) -> torch.nn.Module:
        """The encoder layer whose output is the site (for hooks: VLMs and the slow references)."""
        return self.layers[self.block_index(site)]

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        batch = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        return batch["pixel_values"].to(self.device, torch.float32)

    def embed(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """(B, T, D): T = 1 + patches for CLIP (after its pre_layrnorm), patches for SigLIP."""
        x_BTD = self.vision.embeddings(pixels_BCHW)
        return self.vision.pre_layrnorm(x_BTD) if self.kind == "clip" else x_BTD

    def blocks(self, acts_BTD: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        self.check_span(start, stop)
        for layer in self.layers[start:stop]:
            acts_BTD = layer(acts_BTD, None)
        return acts_BTD

    def head(self, acts_BTD: torch.Tensor) -> torch.Tensor:
        """CLIP: post_layernorm of the class token and the projection; SigLIP: post_layernorm of every token and
        the attention-pooling head. (B, E), unnormalised."""
        if self.kind == "clip":
            return self.model.visual_projection(self.vision.post_layernorm(acts_BTD[:, 0]))
        return self.vision.head(self.vision.post_layernorm(acts_BTD))

    def encode_image(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """The model's own full forward (the reference that prefix + suffix must equal)."""
        out = self.model.get_image_features(pixel_values=pixels_BCHW)
        # transformers 5 returns an output object with the projected embedding as pooler_output; 4.x a tensor
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Normalised text embeddings (L, E)."""
        if self.kind == "siglip":
            tokens = self.tokenizer(
                prompts, padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
            )
            out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device))
        else:
            tokens = self.tokenizer(
                prompts, padding=True, max_length=self.context_length, truncation=True, return_tensors="pt"
            )
            out = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
            )
        emb_LE = out if isinstance(out, torch.Tensor) else out.pooler_output
        return F.normalize(emb_LE, dim=-1)

    @property
    def logit_scale(self) -> float:
        return self._logit_scale


def _load(name: str):
    """(model, tokenizer, image processor) from a local directory, the local cache, or (online) the hub."""
    return load_pretrained(
        name, _from_pretrained, "transformers model", "what save_pretrained writes (config.json, weights) plus the "
        "tokenizer and preprocessor files",
    )  # fmt: skip


def _from_pretrained(name: str, local_files_only: bool):
    config = AutoConfig.from_pretrained(name, local_files_only=local_files_only)
    if config.model_type not in MODEL_CLASSES:
        raise ModelUnavailableError(
            f"{name} is a {config.model_type!r} model; the hf_clip family supports model_type "
            f"{', '.join(MODEL_CLASSES)} (for SigLIP 2 only fixed-resolution checkpoints of model_type siglip)"
        )
    model = MODEL_CLASSES[config.model_type].from_pretrained(
        name, local_files_only=local_files_only, dtype=torch.float32
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)
    except ImportError as error:  # SigLIP's SentencePiece tokenizer needs the optional sentencepiece package
        raise ModelUnavailableError(
            f"the tokenizer of {name} needs a package that is not installed: {error}"
        ) from error
    image_processor = AutoImageProcessor.from_pretrained(name, local_files_only=local_files_only)
    return model, tokenizer, image_processor


def _check_tokenizer(tokenizer, name: str) -> None:
    """Refuse a tokenizer that loaded without its vocabulary: transformers builds a CLIP tokenizer with a
    handful of special tokens when vocab.json / tokenizer.json are missing, and every prompt then maps to
    the same unknown tokens (all labels would score the same)."""
    ids = tokenizer(PROBE_SENTENCE, add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    if len(tokenizer) < MIN_VOCABULARY or not ids or all(i in special for i in ids):
        raise ModelUnavailableError(
            f"the tokenizer of {name} has {len(tokenizer)} tokens and maps {PROBE_SENTENCE!r} to {ids}: "
            "its vocabulary files (tokenizer.json, or vocab.json + merges.txt, or spiece.model) are "
            "missing. Copy them from the checkpoint (`hf download ... --local-dir DIR`) into the model directory."
        )
