"""Train the toy world's vision-language model: transformers' own ``LlavaForConditionalGeneration``.

The Explain tab asks a VLM what a latent means (engine/explain.py), so the toy world needs a VLM whose
vision tower is the toy CLIP the toy SAE was trained on. It is built from transformers' LLaVA parts, so the
toy and the real VLMs run one code path (processor, chat template, ``generate``, hooks on
``model.model.vision_tower.encoder.layers``):

    image --CLIP vision tower (the toy CLIP's, converted from open_clip, frozen)--> hidden_states[-2]
          --drop the class token ("default" strategy)--> 36 patch tokens --projector (trained)-->
          36 "<image>" embeddings in the prompt --Llama (trained from scratch)--> caption

* **The vision tower** is the toy CLIP's image tower, weight for weight (:func:`convert_visual`): open_clip's
  fused ``in_proj`` is split into q, k, v; its ``ln_pre`` is CLIP's ``pre_layrnorm``. Its hidden states equal
  open_clip's at every block (``tests/test_explain.py``). LLaVA reads ``vision_feature_layer=-2``, the output
  of block 2 of 4, which is exactly the toy SAE's site ``blocks.2.resid_post``, as LLaVA-1.5 reads layer 22
  of 24 where the sae-for-vlm SAE sits.
* **The language model** is a small Llama over a word-level vocabulary: the caption grammar of
  ``engine.toyworld.captions`` and the words of a few questions. It learns, from frozen image features, to
  answer every question with the scene's full caption ("a large red circle in the top left on a plain
  background with no corner marker"), and ``nothing`` for *neutral images*: white, black, grey, noise and
  empty backgrounds (the paper's explanations steer a concept into a plain white image, so the model must
  know what an image with nothing in it looks like).
* **Questions**: "What is shown in this image?", the single-word question of Pach et al. 2025, and
  "What is the highlighted element in the image?" answered after the prefix "The highlighted element in the
  image is a" (Ferrando et al. 2026), so both explanation styles meet a prompt the model has seen.

* **Feature mixup**: half of the scenes are shown faded into a neutral image (the tower's features
  ``(1 - lam) * neutral + lam * scene``, ``lam`` uniform in [0.1, 1]) with the scene's caption. Without it the
  language model learnt a sharp rule (anything near a neutral image is ``nothing``) and no steered direction,
  however strong, changed its answer: explanation accuracy 0 at every coefficient from 1 to 16. A real VLM's
  language model answers in proportion to the evidence; the mixup teaches the toy one the same.
* **Empty scenes say what they show**: 2,400 backgrounds without a shape, with or without the marker, are
  captioned "a striped background with a corner marker"; white, black, grey and noise stay ``nothing``. Without
  them the model spoke of the background only beside an object, so texture and marker latents pushed into a
  white image were rarely named, and the controls' captions filled every factor with a default value (control
  false rate 0.12 at coefficient 16; with them 0.06, and 0.09 at 32).
* **Object mixup**: a third of the scenes are shown as what their object adds to their own background
  (the scene's features minus those of the same background rendered empty), scaled by ``lam`` in [0.1, 1.5] and
  added into a neutral image, with the caption of everything but the (unseen) texture. With the whole-scene
  mixup alone, what made an image "not nothing" was mostly its grey background, which no concept direction
  carries: explanation accuracy 0.35 at coefficient 32 (control false rate 0.15).

Only the projector and the language model are trained (cross-entropy on the answer tokens), on image
features computed once by the frozen tower. Held-out exact match of the caption is the manifest's
``vlm_caption_exact_match``, measured through ``processor`` + ``generate`` like any user request.

The asset is a ``save_pretrained`` directory (config, weights, tokenizer, processor with its chat template):
``engine.vlm.VisionLanguageModel`` loads it the way it loads ``llava-hf/llava-1.5-7b-hf``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from engine.toyworld import captions
from engine.toyworld.render import FACTORS, IMAGE_SIZE, Scene, render, render_background, sample_scenes

log = logging.getLogger(__name__)

IMAGE_TOKEN, BOS, EOS, PAD, UNK = "<image>", "<s>", "</s>", "<pad>", "<unk>"
NEUTRAL_ANSWER = "nothing"
DESCRIBE = "What is shown in this image?"
ONE_WORD = "What is shown in this image? Use exactly one word!"
HIGHLIGHTED = "What is the highlighted element in the image?"
HIGHLIGHTED_PREFIX = "The highlighted element in the image is a"
QUESTIONS: tuple[tuple[str, str], ...] = (
    (DESCRIBE, ""),
    (ONE_WORD, ""),
    ("Describe the image.", ""),
    (HIGHLIGHTED, HIGHLIGHTED_PREFIX),
)
"""(question, answer prefix) pairs the toy VLM is trained on; the answer follows the prefix."""
PROMPT_WORDS = (
    "user assistant what is shown in this image ? use exactly one word ! describe the . highlighted element "
    "a an of it there do you see which object concept picture photo , : show colour color shape"
).split()
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %}</s>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
"""LLaVA-1.5's conversation format ("USER: <image>\\n... ASSISTANT:") as a chat template."""


@dataclass(frozen=True)
class ToyVLMConfig:
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    train_scenes: int = 16_000
    neutral_images: int = 1_600
    steps: int = 2_500
    batch_size: int = 32
    lr: float = 3e-3
    heldout_scenes: int = 200
    mix_share: float = 0.5
    object_share: float = 0.3
    empty_scenes: int = 2_400
    mix_min: float = 0.1
    seed: int = 0


def caption_words() -> list[str]:
    words = {"a", "shape", "in", "the", "on", "background", "with", "corner", "marker", "no", NEUTRAL_ANSWER}
    for values in FACTORS.values():
        for value in values:
            words.update(value.split())
    return sorted(words)


def build_tokenizer():
    """A word-level tokenizer (lower-cased, split on spaces and punctuation) over the captions' and the questions'
    words, with LLaVA's special tokens; unknown words become ``<unk>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, BOS, EOS, IMAGE_TOKEN]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in [*caption_words(), *PROMPT_WORDS]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        extra_special_tokens={"image_token": IMAGE_TOKEN}, padding_side="left",
    )  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def clip_vision_config(clip_dir: Path):
    """transformers' CLIPVisionConfig equal to the open_clip toy tower's config."""
    from transformers import CLIPVisionConfig

    vision = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
    width = vision["width"]
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(width * vision.get("mlp_ratio", 4.0)),
        num_hidden_layers=vision["layers"],
        num_attention_heads=width // vision.get("head_width", 64),
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        hidden_act="gelu",  # open_clip's nn.GELU (exact), not OpenAI's quick_gelu
        layer_norm_eps=1e-5,
    )


def convert_visual(visual: torch.nn.Module) -> dict[str, torch.Tensor]:
    """open_clip ``VisionTransformer`` weights as a transformers ``CLIPVisionModel`` state dict."""
    state = visual.state_dict()
    out = {
        "embeddings.class_embedding": state["class_embedding"],
        "embeddings.patch_embedding.weight": state["conv1.weight"],
        "embeddings.position_embedding.weight": state["positional_embedding"],
        "pre_layrnorm.weight": state["ln_pre.weight"],
        "pre_layrnorm.bias": state["ln_pre.bias"],
        "post_layernorm.weight": state["ln_post.weight"],
        "post_layernorm.bias": state["ln_post.bias"],
    }
    for i in range(len(visual.transformer.resblocks)):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        q_w, k_w, v_w = state[src + "attn.in_proj_weight"].chunk(3)
        q_b, k_b, v_b = state[src + "attn.in_proj_bias"].chunk(3)
        for name, w, b in (("q_proj", q_w, q_b), ("k_proj", k_w, k_b), ("v_proj", v_w, v_b)):
            out[f"{dst}self_attn.{name}.weight"], out[f"{dst}self_attn.{name}.bias"] = w, b
        pairs = {
            "self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
            "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
        }  # fmt: skip
        for hf_name, oc_name in pairs.items():
            for p in ("weight", "bias"):
                out[f"{dst}{hf_name}.{p}"] = state[f"{src}{oc_name}.{p}"]
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def build_processor(tokenizer, clip_dir: Path):
    """LlavaProcessor: the toy CLIP's preprocessing (bicubic resize to 48, mean 0.5, std 0.25) and the tokenizer;
    "<image>" expands to one token per patch (the class token is dropped by the "default" strategy)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    pre = json.loads((clip_dir / "open_clip_config.json").read_text())["preprocess_cfg"]
    vision = json.loads((clip_dir / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]
    image_processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": pre["size"]}, resample=3, do_center_crop=True,
        crop_size={"height": pre["size"], "width": pre["size"]}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(pre["mean"]), image_std=list(pre["std"]), do_convert_rgb=True,
    )  # fmt: skip
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision["patch_size"],
        vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )  # fmt: skip


def build_model(clip_dir: Path, tokenizer, config: ToyVLMConfig):
    """A LLaVA whose vision tower holds the toy CLIP's image tower; projector and Llama freshly initialised."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision_config = clip_vision_config(clip_dir)
    grid = vision_config.image_size // vision_config.patch_size
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden, intermediate_size=config.intermediate,
        num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
        max_position_embeddings=128, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    llava_config = LlavaConfig(
        vision_config=vision_config, text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_length=grid * grid,
        vision_feature_layer=-2, vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )  # fmt: skip
    torch.manual_seed(config.seed)
    model = LlavaForConditionalGeneration(llava_config)
    oc_model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{clip_dir}")
    missing, unexpected = model.model.vision_tower.load_state_dict(convert_visual(oc_model.visual), strict=False)
    if unexpected or any(not k.endswith("position_ids") for k in missing):
        raise RuntimeError(f"vision tower conversion: missing {missing}, unexpected {unexpected}")
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def background_caption(texture: str, marker: str) -> str:
    """What an empty scene shows: "a striped background with a corner marker"."""
    return f"a {texture} background " + ("with a corner marker" if marker == "present" else "with no corner marker")


def neutral_image(kind: int, seed: int) -> Image.Image:
    """White, black, mid grey, uniform noise, or an empty background of one of the textures."""
    rng = np.random.default_rng(seed)
    size = (IMAGE_SIZE, IMAGE_SIZE)
    if kind == 0:
        return Image.new("RGB", size, (255, 255, 255))
    if kind == 1:
        return Image.new("RGB", size, (0, 0, 0))
    if kind == 2:
        return Image.new("RGB", size, tuple(int(v) for v in rng.integers(60, 200, size=3)))
    if kind == 3:
        return Image.fromarray(rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))
    return render_background(FACTORS["texture"][kind % 3], seed)


N_NEUTRAL_KINDS = 7


def neutral_kinds(config: ToyVLMConfig) -> int:
    """White, black, grey, noise; and empty backgrounds too, unless empty scenes are captioned by what they show."""
    return 4 if config.empty_scenes else N_NEUTRAL_KINDS


def answer_text(scene: Scene | tuple[str, str] | None, prefix: str, background: bool = True) -> str:
    """What the model should say after ``prefix``: the caption (its leading "a" is in the prefix when there is
    one; without the texture when the background is not shown), or ``nothing`` for a neutral image."""
    if scene is None:
        return NEUTRAL_ANSWER
    if isinstance(scene, tuple):  # an empty scene: its background and marker
        text = background_caption(*scene)
        return text[2:] if prefix else text
    mentioned = scene.as_dict() if background else {k: v for k, v in scene.as_dict().items() if k != "texture"}
    text = captions.caption(mentioned)
    return text[2:] if prefix else text


def prompt_text(processor, question: str, prefix: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return f"{text} {prefix}" if prefix else text


@torch.no_grad()
def image_features(model, processor, images: list[Image.Image], batch: int = 512) -> torch.Tensor:
    """The frozen tower's patch features at ``vision_feature_layer``, before the projector, (N, P, D)."""
    out = []
    for start in range(0, len(images), batch):
        pixels = processor.image_processor(images=images[start : start + batch], return_tensors="pt")["pixel_values"]
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        out.append(hidden[model.config.vision_feature_layer][:, 1:])
    return torch.cat(out)


def train(clip_dir: Path, config: ToyVLMConfig, out: Path, device: str = "cpu") -> dict:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    start = time.time()
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, clip_dir)
    model = build_model(clip_dir, tokenizer, config)
    scenes = sample_scenes(config.train_scenes, seed=config.seed + 31_337)
    images = [render(s, seed)[0] for s, seed in scenes]
    kinds = neutral_kinds(config)
    images += [neutral_image(i % kinds, config.seed + i) for i in range(config.neutral_images)]
    truth: list[Scene | tuple[str, str] | None] = [s for s, _ in scenes] + [None] * config.neutral_images
    n_bases = len(images)  # neutral images above this index are empty scenes with something to say
    if config.empty_scenes:
        empty = [
            (str(rng.choice(FACTORS["texture"])), str(rng.choice(FACTORS["marker"])))
            for _ in range(config.empty_scenes)
        ]
        images += [render_background(t, config.seed + 50_000 + i, m == "present") for i, (t, m) in enumerate(empty)]
        truth += empty
    feats_NPD = image_features(model, processor, images)
    # each scene's own background without its shape and marker: scene - background is what the object adds
    backgrounds_NPD = image_features(model, processor, [render_background(s.texture, seed) for s, seed in scenes])
    log.info("image features %s in %.0f s", tuple(feats_NPD.shape), time.time() - start)

    image_id = model.config.image_token_index
    prompts = [tokenizer(processor_prompt(processor, q, p))["input_ids"] for q, p in QUESTIONS]
    answers: dict[str, list[int]] = {}

    def answer_ids(text: str) -> list[int]:
        if text not in answers:
            answers[text] = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return answers[text]

    model.to(device)
    # eager attention: for sequences this short it is ~3x faster than SDPA on a CPU (the saved config keeps sdpa)
    model.model.language_model.config._attn_implementation = "eager"
    model.model.vision_tower.requires_grad_(False)
    trained = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower")]
    optimiser = torch.optim.AdamW(trained, lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, config.lr, total_steps=config.steps, pct_start=max(0.05, 3 / config.steps)
    )
    embed = model.get_input_embeddings()
    model.train()
    for step in range(config.steps):
        idx = rng.integers(len(images), size=config.batch_size)
        which = rng.integers(len(QUESTIONS), size=config.batch_size)
        # object mixup: what a scene's object adds to its background, added into a neutral image instead
        is_scene = np.array([isinstance(truth[i], Scene) for i in idx])
        objects = is_scene & (rng.random(len(idx)) < config.object_share)
        rows = [
            prompts[q] + answer_ids(answer_text(truth[i], QUESTIONS[q][1], background=not o))
            for i, q, o in zip(idx, which, objects)
        ]
        n_prompt = [len(prompts[q]) for q in which]
        length = max(map(len, rows))
        ids_BL = torch.full((len(rows), length), tokenizer.pad_token_id)
        labels_BL = torch.full((len(rows), length), -100)
        mask_BL = torch.zeros((len(rows), length), dtype=torch.long)
        for b, (row, n) in enumerate(zip(rows, n_prompt)):
            ids_BL[b, : len(row)] = torch.tensor(row)
            labels_BL[b, n : len(row)] = torch.tensor(row[n:])
            mask_BL[b, : len(row)] = 1
        ids_BL, labels_BL, mask_BL = ids_BL.to(device), labels_BL.to(device), mask_BL.to(device)
        feats_BPD = feats_NPD[torch.as_tensor(idx)]
        # feature mixup: a scene faded into a neutral image (weight lam of the scene) keeps the scene's caption
        mixed = is_scene & (rng.random(len(idx)) < config.mix_share) & ~objects
        if mixed.any():
            neutral = torch.as_tensor(rng.integers(len(scenes), n_bases, size=int(mixed.sum())))
            lam = torch.as_tensor(rng.uniform(config.mix_min, 1.0, size=int(mixed.sum())), dtype=feats_BPD.dtype)
            lam = lam[:, None, None]
            feats_BPD[torch.as_tensor(mixed)] = (1 - lam) * feats_NPD[neutral] + lam * feats_BPD[torch.as_tensor(mixed)]
        if objects.any():
            n = int(objects.sum())
            neutral = torch.as_tensor(rng.integers(len(scenes), n_bases, size=n))
            lam = torch.as_tensor(rng.uniform(config.mix_min, 1.5, size=n), dtype=feats_BPD.dtype)[:, None, None]
            chosen = torch.as_tensor(idx[objects])
            delta = feats_NPD[chosen] - backgrounds_NPD[chosen]
            feats_BPD[torch.as_tensor(objects)] = feats_NPD[neutral] + lam * delta
        image_BPH = model.model.multi_modal_projector(feats_BPD.to(device))
        embeds_BLH = embed(ids_BL).masked_scatter((ids_BL == image_id)[..., None], image_BPH)
        hidden = model.model.language_model(inputs_embeds=embeds_BLH, attention_mask=mask_BL).last_hidden_state
        logits_BLV = model.lm_head(hidden[:, :-1])
        loss = F.cross_entropy(logits_BLV.flatten(0, 1), labels_BL[:, 1:].flatten(), ignore_index=-100)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        schedule.step()
        if step % 250 == 0 or step == config.steps - 1:
            log.info("toy VLM step %d/%d loss %.4f", step, config.steps, loss.item())
    model.model.language_model.config._attn_implementation = "sdpa"
    model.eval().to("cpu")
    metrics = {"vlm_caption_exact_match": caption_exact_match(model, processor, config.heldout_scenes)}
    metrics["neutral_says_nothing"] = neutral_says_nothing(model, processor, kinds=neutral_kinds(config))
    metrics["train_seconds"] = round(time.time() - start)
    log.info("toy VLM %s", metrics)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    manifest = {
        "what": "toy-world LLaVA (transformers LlavaForConditionalGeneration): the toy CLIP's vision tower, "
        "a trained projector and a small Llama",
        "clip": str(clip_dir.name),
        "config": asdict(config),
        "questions": [list(q) for q in QUESTIONS],
        "metrics": metrics,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return metrics


def processor_prompt(processor, question: str, prefix: str) -> str:
    """The prompt with "<image>" expanded to one token per patch, as the processor sends it to the model."""
    text = prompt_text(processor, question, prefix)
    n = processor.num_image_tokens if hasattr(processor, "num_image_tokens") else None
    if n is None:
        config = processor.image_processor.crop_size
        n = (config["height"] // processor.patch_size) ** 2
    return text.replace(IMAGE_TOKEN, IMAGE_TOKEN * n)


HELDOUT_SEED = 991_000


@torch.no_grad()
def generate_captions(
    model, processor, images: list[Image.Image], question: str = DESCRIBE, prefix: str = ""
) -> list[str]:
    text = prompt_text(processor, question, prefix)
    inputs = processor(images=images, text=[text] * len(images), return_tensors="pt", padding=True)
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    return [t.strip() for t in processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]


def caption_exact_match(model, processor, n: int, seed: int = HELDOUT_SEED) -> float:
    """Share of held-out scenes whose generated answer to "What is shown in this image?" is exactly the caption."""
    scenes = sample_scenes(n, seed)
    said = generate_captions(model, processor, [render(s, sd)[0] for s, sd in scenes])
    return float(np.mean([t == captions.caption(s.as_dict()) for t, (s, _) in zip(said, scenes)]))


def neutral_says_nothing(model, processor, n: int = 28, kinds: int = N_NEUTRAL_KINDS) -> float:
    """Share of held-out neutral images (white, black, grey, noise, empty backgrounds) answered ``nothing``."""
    said = generate_captions(model, processor, [neutral_image(i % kinds, HELDOUT_SEED + i) for i in range(n)])
    return float(np.mean([t == NEUTRAL_ANSWER for t in said]))
