"""Vision-language models through transformers, resident like the CLIPs, steerable at a vision-tower site.

A VLM here is any ``AutoModelForImageTextToText`` whose vision tower is a stack of encoder layers: LLaVA
(a CLIP tower, ``model.model.vision_tower.encoder.layers`` in transformers 5), Gemma 3 (a SigLIP tower)
and SmolVLM / Idefics3 (a SigLIP tower behind a pixel shuffle, ``model.model.vision_model.encoder.layers``,
pixel values (B, N, C, H, W) with one sub-image per crop). The site ``blocks.{i}.resid_post`` is the output
of vision layer ``i``, the same name and place as in the CLIP backends, so an SAE trained on a CLIP's
residual stream at layer i reads and writes the VLM's tower at layer i (LLaVA-1.5 reads layer -2 of its
CLIP: ``blocks.22.resid_post`` of 24).

The VLM cannot be split into a prefix and a suffix (the language model runs token by token in
``generate``), so a steered generation is the one place where the engine edits through a hook: attached
with :meth:`VisionLanguageModel.hooked`, which holds the model's lock, and removed after the call. The
vision tower runs once per ``generate``, in the prefill (later steps read the key-value cache), so a hook
on a vision layer edits the prefill only, as the method asks (a test counts the calls).

Loading never hangs offline (engine.sources.hub_guard) and fails with what to provide.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator

import torch
from PIL import Image

from engine.backends import SITE_PATTERN
from engine.errors import ModelUnavailableError, UnknownChoiceError, UserInputError
from engine.hooks import ForwardHook, attached
from engine.resident import KeyedCache, default_device, resolve_dtype
from engine.sources import AllowedDirs, load_pretrained
from engine.specs import VLMSpec

log = logging.getLogger(__name__)
MAX_NEW_TOKENS = 64
MAX_PROMPT_CHARS = 500


def vision_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The vision tower's encoder layers: the first ``...encoder.layers`` module list inside a module whose name
    says vision (``model.vision_tower.encoder.layers``, ``model.vision_tower.vision_model.encoder.layers``,
    ``model.vision_model.encoder.layers``)."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.endswith("encoder.layers") and "vision" in name:
            return name, module
    raise ModelUnavailableError(
        f"{type(model).__name__}: no vision encoder layers found (looked for a '...vision....encoder.layers' "
        "module list); supported: LLaVA, Gemma 3, SmolVLM / Idefics3 and other towers built the same way"
    )


class VisionLanguageModel:
    """One VLM with its processor on a device, its vision layers, and a lock for every forward pass and hook."""

    def __init__(self, spec: VLMSpec, device: torch.device, dtype: str = "float32"):
        self.spec = spec
        self.device = device
        self.model, self.processor = _load(spec.name, resolve_dtype(dtype))
        self.model = self.model.to(device).eval().requires_grad_(False)
        self.layers_name, self.layers = vision_layers(self.model)
        self.n_blocks = len(self.layers)
        config = self.model.config
        image_token = getattr(config, "image_token_id", None)
        self.image_token_id = image_token if image_token is not None else getattr(config, "image_token_index", None)
        if self.image_token_id is None:
            raise ModelUnavailableError(f"{spec.name}: its config names no image token (image_token_id)")
        self.tokenizer = getattr(self.processor, "tokenizer", None)
        if self.tokenizer is None:
            raise ModelUnavailableError(f"{spec.name}: its processor has no tokenizer")
        self.lock = threading.RLock()

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(f"blocks.{i}.resid_post" for i in range(self.n_blocks))

    def block_index(self, site: str) -> int:
        match = SITE_PATTERN.match(site or "")
        if match is None or int(match.group(1)) >= self.n_blocks:
            raise UnknownChoiceError(
                "vision-tower site", site, [f"blocks.0.resid_post .. blocks.{self.n_blocks - 1}.resid_post"]
            )
        return int(match.group(1))

    def site_module(self, site: str) -> torch.nn.Module:
        return self.layers[self.block_index(site)]

    @contextlib.contextmanager
    def hooked(self, hooks: Iterable[tuple[torch.nn.Module, ForwardHook]]) -> Iterator[None]:
        """Attach ``hooks`` for the block under the model's lock (engine.hooks.attached does the removal)."""
        with self.lock, attached(hooks):
            yield

    def prompt(self, question: str, answer_prefix: str = "") -> str:
        """The model's own chat template around one image and ``question``, ending where the answer starts, then
        ``answer_prefix`` (the start of the answer the model must complete)."""
        check_text("question", question)
        check_text("answer prefix", answer_prefix, empty_ok=True)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        if getattr(self.processor, "chat_template", None):
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        else:  # a processor without a template: the image token, then the question
            text = f"{getattr(self.processor, 'image_token', '<image>')}\n{question}\n"
        return f"{text.rstrip()} {answer_prefix}" if answer_prefix else text

    def inputs(self, images: list[Image.Image], question: str, answer_prefix: str = "") -> dict:
        text = self.prompt(question, answer_prefix)
        # one list of images per prompt: the form every processor accepts (Gemma 3 and Idefics3 require it)
        batch = self.processor(
            images=[[im.convert("RGB")] for im in images], text=[text] * len(images), return_tensors="pt", padding=True
        )
        return {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    @torch.no_grad()
    def generate(
        self, inputs: dict, max_new_tokens: int = 24, seed: int | None = None, temperature: float = 1.0
    ) -> list[str]:
        """Continuations (without the prompt) of a batch: greedy, or sampled from ``seed`` (reproducible)."""
        if not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
            raise UserInputError(f"max new tokens must be between 1 and {MAX_NEW_TOKENS}; got {max_new_tokens}")
        options: dict = {"max_new_tokens": max_new_tokens, "do_sample": seed is not None}
        if seed is not None:
            if not 0.05 <= temperature <= 5:
                raise UserInputError(f"temperature must be between 0.05 and 5; got {temperature}")
            options.update(temperature=temperature, top_k=0, top_p=1.0)
        else:
            options.update(temperature=None, top_k=None, top_p=None)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with self.lock:
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**inputs, pad_token_id=pad, **options)
        new = out[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    @torch.no_grad()
    def site_activations(self, images: list[Image.Image], site: str) -> torch.Tensor:
        """The vision tower's output at ``site`` for ``images`` (N, T, D) (every sub-image for tiling models),
        read by a hook during one forward of the tower alone."""
        layer = self.site_module(site)
        captured: list[torch.Tensor] = []

        def capture(module, args, output):
            captured.append(_hidden(output).detach())

        inputs = self.inputs(images, "describe")
        pixels = inputs["pixel_values"]
        tower = _vision_tower(self.model)
        with self.hooked([(layer, capture)]):
            tower(pixels.flatten(0, 1) if pixels.ndim == 5 else pixels)
        return captured[0]


def _vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "model", model)
    for name in ("vision_tower", "vision_model"):
        if hasattr(inner, name):
            return getattr(inner, name)
    raise ModelUnavailableError(f"{type(model).__name__}: no vision tower (vision_tower / vision_model)")


def _hidden(output) -> torch.Tensor:
    """A layer's hidden states, whether it returns a tensor or a tuple (transformers 4.x layers)."""
    return output if isinstance(output, torch.Tensor) else output[0]


def replace_hidden(output, hidden: torch.Tensor):
    """``output`` with its hidden states replaced (a hook's return value)."""
    return hidden if isinstance(output, torch.Tensor) else (hidden, *output[1:])


def check_text(what: str, text: str, empty_ok: bool = False) -> str:
    if not isinstance(text, str) or (not text.strip() and not empty_ok):
        raise UserInputError(f"the {what} must be text; got {text!r}")
    if len(text) > MAX_PROMPT_CHARS:
        raise UserInputError(f"the {what} is {len(text)} characters long; at most {MAX_PROMPT_CHARS}")
    return text


def _load(name: str, dtype: torch.dtype):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    def from_pretrained(source: str, local_files_only: bool):
        model = AutoModelForImageTextToText.from_pretrained(source, local_files_only=local_files_only, dtype=dtype)
        return model, AutoProcessor.from_pretrained(source, local_files_only=local_files_only)

    return load_pretrained(
        name, from_pretrained, "VLM", "what save_pretrained writes for the model and its processor (config.json, "
        "weights, tokenizer and processor files)",
    )  # fmt: skip


_vlms: KeyedCache[tuple, VisionLanguageModel] = KeyedCache()


def resident_vlm(
    spec: VLMSpec, device: str | torch.device | None = None, dtype: str = "float32", allowed: AllowedDirs | None = None
) -> VisionLanguageModel:
    """The resident VLM for (spec, device, dtype); a local directory must lie in an allowed directory."""
    allowed = allowed or AllowedDirs.default()
    if spec.is_local:
        allowed.check(spec.name)
    device = torch.device(device) if device else default_device()
    resolve_dtype(dtype)
    return _vlms.get((spec, str(device), dtype), lambda: VisionLanguageModel(spec, device, dtype))
