"""Tiny transformers CLIP and SigLIP models with random weights, built offline from a seed.

Each builder writes a directory that ``from_pretrained`` reads like a hub checkpoint: the model
(``save_pretrained``), a real tokenizer and the model's own image processor. Configs are tiny (vision width
32, 3 layers, 32 px images in 8 px patches: a 4 x 4 grid) so that a test runs in seconds.

The tokenizer is CLIP's real byte-level BPE (49,408 tokens), rebuilt from the merges file that open_clip
ships (``bpe_simple_vocab_16e6.txt.gz``) in the order CLIP's ``SimpleTokenizer`` defines: the 256
byte-to-unicode characters, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and
``<|endoftext|>``. SigLIP's own tokenizer is a SentencePiece model that cannot be built offline (and the
``sentencepiece`` package is not installed), so the tiny SigLIP is paired with the CLIP tokenizer: the
text tower's vocabulary is sized to match, and what the tests check (the vision split, padding to the
context length) does not depend on which tokenizer it is.

>>> vocab, merges = clip_bpe_vocab_and_merges()
>>> len(vocab), len(merges), vocab["<|endoftext|>"]
(49408, 48894, 49407)
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import torch
from open_clip.tokenizer import bytes_to_unicode, default_bpe
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

IMAGE_SIZE, PATCH_SIZE, VISION_WIDTH, VISION_LAYERS = 32, 8, 32, 3
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH, SIGLIP_CONTEXT_LENGTH = 77, 16
SITE = "blocks.1.resid_post"


def clip_bpe_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary (token -> id) and merges, exactly as open_clip's SimpleTokenizer builds them."""
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # line 0 is a version header
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_clip_tokenizer(directory: Path, context_length: int = CLIP_CONTEXT_LENGTH) -> Path:
    """CLIP's tokenizer in ``directory``: vocab.json + merges.txt (the hub layout) and tokenizer.json."""
    vocab, merges = clip_bpe_vocab_and_merges()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)
    tokenizer.save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return directory


def _text_config(context_length: int) -> dict:
    return {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": context_length,
    }


def _vision_config() -> dict:
    return {
        "hidden_size": VISION_WIDTH,
        "intermediate_size": 2 * VISION_WIDTH,
        "num_hidden_layers": VISION_LAYERS,
        "num_attention_heads": 2,
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
    }


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """A random transformers CLIPModel with CLIP's tokenizer and image processor, saved in ``directory``."""
    text = _text_config(CLIP_CONTEXT_LENGTH) | {"bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}
    config = CLIPConfig(text_config=text, vision_config=_vision_config(), projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(directory)
    write_clip_tokenizer(directory, CLIP_CONTEXT_LENGTH)
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=crop).save_pretrained(directory)
    return directory


def build_tiny_siglip(directory: Path, seed: int = 0) -> Path:
    """A random transformers SiglipModel (attention-pooling head, no class token) with CLIP's tokenizer."""
    text = _text_config(SIGLIP_CONTEXT_LENGTH) | {"pad_token_id": 49407, "eos_token_id": 49407}
    config = SiglipConfig(text_config=text, vision_config=_vision_config())
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():  # SigLIP's init leaves the scale at 0 (exp = 1); a trained value makes logits spread
        model.logit_scale.fill_(2.3)
    model.save_pretrained(directory)
    write_clip_tokenizer(directory, SIGLIP_CONTEXT_LENGTH)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(directory)
    return directory
