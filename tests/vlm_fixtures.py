"""Tiny random-weight VLMs of the three real families, saved like hub checkpoints (model + processor), offline.

Each is transformers' own class with a config small enough to build in a second: LLaVA (a CLIP tower),
Gemma 3 (a SigLIP tower, its image between begin/end-of-image tokens) and SmolVLM (a SigLIP tower behind a
pixel shuffle, images cut into crops: 5-D pixel values). Their tokenizers are word-level, built here, with
each family's special tokens, so that each processor expands the image exactly as the real one does.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = "what is shown in this image ? use exactly one word ! the highlighted element a red circle user assistant : .".split()


def word_tokenizer(specials: list[str], extra: dict[str, str] | None = None, chat_template: str | None = None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(base + specials)}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens=extra or {}, padding_side="left",
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


SIMPLE_TEMPLATE = (
    "{% for message in messages %}{% for part in message['content'] %}{% if part['type'] == 'image' %}{IMAGE}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} assistant :{% endif %}"
)


def text_config(vocab_size: int, **extra):
    return dict(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, **extra,
    )  # fmt: skip


def build_llava(out: Path) -> Path:
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )  # fmt: skip

    template = SIMPLE_TEMPLATE.replace("{IMAGE}", "<image>")
    tokenizer = word_tokenizer(["<image>"], {"image_token": "<image>"}, template)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = LlavaConfig(
        vision_config=vision, text_config=LlamaConfig(**text_config(len(tokenizer))),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=16, vision_feature_layer=-2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        chat_template=template, num_additional_image_tokens=1,
    )  # fmt: skip
    return _save(model, processor, tokenizer, out)


def build_gemma3(out: Path) -> Path:
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        Gemma3TextConfig,
        SiglipVisionConfig,
    )  # fmt: skip

    specials = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    template = SIMPLE_TEMPLATE.replace("{IMAGE}", "<start_of_image>")
    tokenizer = word_tokenizer(
        specials, {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
        template,
    )  # fmt: skip
    vision = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8,
        vision_use_head=False,
    )  # fmt: skip
    text = Gemma3TextConfig(**text_config(len(tokenizer)), head_dim=16, sliding_window=64)
    config = Gemma3Config(
        vision_config=vision, text_config=text, mm_tokens_per_image=4,
        image_token_index=tokenizer.convert_tokens_to_ids("<image_soft_token>"),
        boi_token_index=tokenizer.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tokenizer.convert_tokens_to_ids("<end_of_image>"),
    )  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config)
    image_processor = Gemma3ImageProcessor(size={"height": 32, "width": 32}, do_pan_and_scan=False)
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template, image_seq_length=4
    )
    return _save(model, processor, tokenizer, out)


def build_smolvlm(out: Path) -> Path:
    from transformers import (
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
        SmolVLMVisionConfig,
    )  # fmt: skip

    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    specials += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    template = SIMPLE_TEMPLATE.replace("{IMAGE}", "<image>")
    tokenizer = word_tokenizer(
        specials,
        {"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
         "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>"},
        template,
    )  # fmt: skip
    vision = SmolVLMVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = SmolVLMConfig(
        vision_config=vision, text_config=LlamaConfig(**text_config(len(tokenizer))), scale_factor=2,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    torch.manual_seed(0)
    model = SmolVLMForConditionalGeneration(config)
    image_processor = SmolVLMImageProcessor(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 32}, do_image_splitting=True
    )
    processor = SmolVLMProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(),
        image_seq_len=4, chat_template=template,
    )  # fmt: skip
    return _save(model, processor, tokenizer, out)


def _save(model, processor, tokenizer, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def tower_sae(out: Path, seed: int = 1) -> Path:
    """A random TopK SAE (64 latents, k=8) at blocks.1.resid_post of the tiny towers (width 32), saved natively."""
    from engine.sae import SAE, SAEConfig

    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=8, hook_name="blocks.1.resid_post"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    sae.save(out)
    return out


BUILDERS = {"llava": build_llava, "gemma3": build_gemma3, "smolvlm": build_smolvlm}
