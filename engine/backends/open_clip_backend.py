"""open_clip backend: a CLIP split at a residual-stream site into a prefix and a suffix.

Sites are ``blocks.{i}.resid_post``: the residual stream after vision block ``i`` (tokens: the class token
first, then the patches row by row). ``embed`` is the patch embedding (open_clip's ``_embeds``), ``blocks`` the
residual blocks, ``head`` the pooling and projection (``_pool`` and ``proj``); ``prefix`` runs the embedding and
blocks 0..i, ``suffix`` blocks i+1.. and the head, so ``suffix(prefix(x))`` equals ``model.encode_image(x)`` and a sweep or an
attribution never recomputes the prefix. The preprocessing and the tokenizer are the ones open_clip returns
for the weights.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from engine.backends import ResidualSites
from engine.errors import ModelUnavailableError
from engine.sources import hub_guard
from engine.specs import ModelSpec

log = logging.getLogger(__name__)


def is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and Path(pretrained).is_file()


def first_line(error: BaseException) -> str:
    """The first line of a library's message, at most 200 characters (state-dict errors list every key)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:200]


def unavailable(spec: ModelSpec, offline: bool, error: BaseException):
    where = "the hub is not reachable from here" if offline else "it could not be fetched"
    raise ModelUnavailableError(
        f"open_clip model {spec.display_name} is not in the local cache and {where} ({error}). "
        "Provide it locally: a weights file as the pretrained tag (open_clip:NAME@/path/to/weights.bin), "
        "or a directory with open_clip_config.json and weights (open_clip:local-dir:/path)."
    ) from error


class OpenClipBackend(ResidualSites):
    def __init__(self, spec: ModelSpec, device: torch.device):
        self.spec = spec
        self.device = device
        with hub_guard() as offline:
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    spec.name, pretrained=spec.pretrained, device=device
                )
                self.tokenizer = open_clip.get_tokenizer(spec.name)  # hf-hub: names fetch theirs
            except pickle.UnpicklingError:
                raise ModelUnavailableError(
                    f"the weights file of {spec.display_name} needs unpickling of arbitrary objects, which is refused "
                    "(it could run code); save the state dict as safetensors (safetensors.torch.save_file)"
                ) from None
            except (RuntimeError, AssertionError, KeyError, ValueError) as error:
                if not is_local_file(spec.pretrained):
                    if not isinstance(error, RuntimeError):
                        raise  # a bug, not a download failure
                    unavailable(spec, offline, error)
                raise ModelUnavailableError(
                    f"the weights in {Path(spec.pretrained).name} do not fit the open_clip architecture {spec.name} "
                    f"({first_line(error)}); give a checkpoint of that architecture, or name the right one "
                    "(open_clip:NAME@/path/weights)"
                ) from None
            except (FileNotFoundError, OSError) as error:
                unavailable(spec, offline, error)
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        # Read once in float32: the workbench may cast the model to bfloat16 later, which would round it.
        self._logit_scale = float(self.model.logit_scale.exp().clamp(max=100))
        visual = self.model.visual
        if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "transformer"):
            raise ModelUnavailableError(f"{spec.display_name}: only ViT towers with token pooling are supported")
        self.visual = visual
        self.n_blocks = len(visual.transformer.resblocks)
        self.grid = tuple(visual.grid_size)
        self.n_prefix_tokens = 1
        self.d_model = visual.transformer.width
        self.context_length = self.model.context_length

    def site_module(self, site: str) -> torch.nn.Module:
        """The module whose output is the site (for hooks: VLMs and the slow references)."""
        return self.visual.transformer.resblocks[self.block_index(site)]

    def pixels(self, images: list[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(im.convert("RGB")) for im in images]).to(self.device)

    def embed(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """Class token + patch embeddings + positions (and open_clip's ln_pre), (B, T, D)."""
        return self.visual._embeds(pixels_BCHW)

    def blocks(self, acts_BTD: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        self.check_span(start, stop)
        for block in self.visual.transformer.resblocks[start:stop]:
            acts_BTD = block(acts_BTD)
        return acts_BTD

    def head(self, acts_BTD: torch.Tensor) -> torch.Tensor:
        """open_clip's pooling (ln_post, class token or mean) and projection, (B, E)."""
        pooled_BD, _ = self.visual._pool(acts_BTD)
        return pooled_BD @ self.visual.proj if self.visual.proj is not None else pooled_BD

    def encode_image(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """The model's own full forward (the reference that prefix + suffix must equal)."""
        return self.model.encode_image(pixels_BCHW)

    @torch.no_grad()
    def encode_text(self, prompts: list[str], chunk: int = 256) -> torch.Tensor:
        """Normalised text embeddings (L, E), in chunks of ``chunk`` prompts."""
        tokens_LC = self.tokenizer(prompts).to(self.device)
        parts = [self._encode_tokens(tokens_LC[i : i + chunk]) for i in range(0, len(prompts), chunk)]
        return F.normalize(torch.cat(parts), dim=-1)

    def _encode_tokens(self, tokens_LC: torch.Tensor) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` over only the columns up to the last end-of-text token.

        The text tower is causal and pools at the end-of-text token, so the padding columns after it cannot
        change the result; dropping them makes a label list or a concept vocabulary (prompts of ~10 of 77
        tokens) several times cheaper to encode. Other text towers go through the model's own method.
        """
        model = self.model
        causal = isinstance(model, open_clip.CLIP) and getattr(model, "attn_mask", None) is not None
        if not causal or model.text_pool_type not in ("argmax", "eos"):
            return model.encode_text(tokens_LC)
        if model.text_pool_type == "argmax":
            end_L = tokens_LC.argmax(dim=-1)
        else:
            end_L = (tokens_LC == model.text_eos_id).int().argmax(dim=-1)
        n = int(end_L.max()) + 1
        cast_dtype = model.transformer.get_cast_dtype()
        x_LND = model.token_embedding(tokens_LC[:, :n]).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
        x_LND = model.ln_final(model.transformer(x_LND, attn_mask=model.attn_mask[:n, :n]))
        pooled_LD = x_LND[torch.arange(len(tokens_LC), device=x_LND.device), end_L]
        if model.text_projection is None:
            return pooled_LD
        if isinstance(model.text_projection, torch.nn.Linear):
            return model.text_projection(pooled_LD)
        return pooled_LD @ model.text_projection

    @property
    def logit_scale(self) -> float:
        return self._logit_scale
