"""Sparse autoencoders: the module, and native save in the SAELens layout.

An SAE reads a model's activation ``x`` (d_in) at one site and writes it as a sparse, non-negative code
``f`` (d_sae latents) whose decoder rows are the concept directions:

    f = act((norm(x) - b_dec) @ W_enc + b_enc)      (b_dec subtracted only if apply_b_dec_to_input)
    x_hat = denorm(f @ W_dec + b_dec)
    error = x - x_hat

``act`` is TopK (keep the k largest pre-activations, Gao et al. 2024; their ReLU unless ``topk_relu`` is
off, as in saev), ReLU, or JumpReLU (``relu(pre)`` where ``pre > threshold``, else zero; Rajamanoharan et al.
2024). ``norm`` is the identity for almost every SAE; a few formats (SAELens, ViT-Prisma) may normalise each
input first (``normalize_activations``): ``layer_norm`` (centre, divide by the std) or
``constant_norm_rescale`` (scale to norm sqrt(d_in)). Then ``denorm`` maps the reconstruction back with the
statistics of that same input, so ``decode`` needs ``x`` too, and a change ``delta`` in the SAE's output space
moves the activation by ``delta * output_scale(x)``. The engine never replaces ``x`` by ``x_hat``: every
analysis keeps ``error`` (SAELens' ``use_error_term``), so that inserting the SAE changes nothing and an edit
of latent i moves the activation by exactly ``(f_i' - f_i) * W_dec[i]``.

On disk (SAELens layout): ``cfg.json`` plus ``sae_weights.safetensors`` holding ``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]``.
``SAE.save`` writes it; ``engine.sae_formats.load_sae`` reads it back (the one loader for every format,
ours included: ``engine/sae_formats/saelens.py``), to an equal ``SAEConfig``.

>>> sae = SAE(SAEConfig(d_in=4, d_sae=8, architecture="topk", k=2, hook_name="blocks.0.resid_post"))
>>> f = sae.encode(torch.randn(3, 4))
>>> int((f > 0).sum(-1).max()) <= 2
True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from engine.errors import SAEFormatError  # noqa: F401  (re-exported: callers import it from here)

ARCHITECTURES = ("topk", "relu", "jumprelu")
NORMALIZATIONS = ("none", "layer_norm", "constant_norm_rescale")
LAYER_NORM_EPS = 1e-5  # SAELens and ViT-Prisma: (x - mean) / (std + eps) on the way in, * std + mean out
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


DENSE_MAX_MACS = 4_000_000
"""Below this many multiply-adds a product with the whole dictionary is one kernel call and beats gathering
the k active latents' rows (ten times faster on the toy: 37 tokens x 384 latents x 96 dimensions); above it
(ViT-B/32: 50 x 24,576 x 768, nearly a billion) the gather is ten times faster than the product."""


def dense_is_cheaper(rows: int, d_sae: int, d_in: int) -> bool:
    """Whether ``rows`` codes are better multiplied with the whole (d_sae, d_in) dictionary than gathered."""
    return rows * d_sae * d_in <= DENSE_MAX_MACS


@dataclass(frozen=True)
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str
    hook_name: str
    k: int | None = None
    apply_b_dec_to_input: bool = True
    model_name: str = ""
    normalize_activations: str = "none"
    topk_relu: bool = True
    source_format: str = ""  # the format the file came in (engine.sae_formats.SAE_FORMATS); "" = native
    source_site: str = ""  # the site as that format named it, e.g. "blocks.9.hook_resid_post"

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEFormatError(f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if self.architecture == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise SAEFormatError(f"a topk SAE needs 0 < k <= d_sae ({self.d_sae}); got k={self.k}")
        if self.normalize_activations not in NORMALIZATIONS:
            raise SAEFormatError(
                f"unknown normalize_activations {self.normalize_activations!r}; valid: {', '.join(NORMALIZATIONS)}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> SAEConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        if "k" not in values and isinstance(raw.get("activation_fn_kwargs"), dict):
            values["k"] = raw["activation_fn_kwargs"].get("k")
        missing = {"d_in", "d_sae", "architecture", "hook_name"} - set(values)
        if missing:
            raise SAEFormatError(f"cfg.json lacks {sorted(missing)}; found keys {sorted(raw)}")
        return cls(**values)


class SAE(torch.nn.Module):
    def __init__(self, config: SAEConfig):
        super().__init__()
        self.config = config
        d_in, d_sae = config.d_in, config.d_sae
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        if config.architecture == "jumprelu":
            self.threshold = torch.nn.Parameter(torch.zeros(d_sae))

    def normalize(self, x_ND: torch.Tensor) -> torch.Tensor:
        """The input as the SAE sees it (the identity unless ``normalize_activations`` says otherwise)."""
        kind = self.config.normalize_activations
        if kind == "layer_norm":
            centred_ND = x_ND - x_ND.mean(-1, keepdim=True)
            return centred_ND / (centred_ND.std(-1, keepdim=True) + LAYER_NORM_EPS)
        if kind == "constant_norm_rescale":
            return x_ND * (self.config.d_in**0.5 / x_ND.norm(dim=-1, keepdim=True))
        return x_ND

    def output_scale(self, x_ND: torch.Tensor) -> torch.Tensor:
        """(..., 1): how much a unit change in the SAE's output space moves the activation x_ND."""
        kind = self.config.normalize_activations
        if kind == "layer_norm":
            return x_ND.std(-1, keepdim=True)
        if kind == "constant_norm_rescale":
            return x_ND.norm(dim=-1, keepdim=True) / self.config.d_in**0.5
        return torch.ones_like(x_ND[..., :1])

    def pre_activation(self, x_ND: torch.Tensor) -> torch.Tensor:
        x_ND = self.normalize(x_ND)
        if self.config.apply_b_dec_to_input:
            x_ND = x_ND - self.b_dec
        return x_ND @ self.W_enc + self.b_enc

    def activate(self, pre_NS: torch.Tensor) -> torch.Tensor:
        if self.config.architecture == "topk":
            values_NK, indices_NK = pre_NS.topk(self.config.k, dim=-1)
            values_NK = values_NK.relu() if self.config.topk_relu else values_NK
            return torch.zeros_like(pre_NS).scatter(-1, indices_NK, values_NK)
        if self.config.architecture == "jumprelu":
            return pre_NS.relu() * (pre_NS > self.threshold)
        return pre_NS.relu()

    def encode(self, x_ND: torch.Tensor) -> torch.Tensor:
        """Latent activations f, (..., d_sae)."""
        return self.activate(self.pre_activation(x_ND))

    def decode(self, f_NS: torch.Tensor, x_ND: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction x_hat, (..., d_in). ``x_ND``, the input that was encoded, is needed only by an SAE
        that normalises each input (``normalize_activations``), to map the reconstruction back."""
        return self.unnormalise(f_NS @ self.W_dec + self.b_dec, x_ND)

    def encode_topk(self, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A TopK SAE's code three ways: dense f (..., d_sae), and its k values and latent ids per input
        (..., k), which :meth:`decode_topk` reads without touching the other d_sae - k latents."""
        if self.config.architecture != "topk":
            raise ValueError(f"encode_topk needs a topk SAE; this one is {self.config.architecture}")
        pre_NS = self.pre_activation(x_ND)
        values_NK, indices_NK = pre_NS.topk(self.config.k, dim=-1)
        values_NK = values_NK.relu() if self.config.topk_relu else values_NK
        return torch.zeros_like(pre_NS).scatter(-1, indices_NK, values_NK), values_NK, indices_NK

    def decode_topk(self, values_NK: torch.Tensor, indices_NK: torch.Tensor, x_ND: torch.Tensor | None = None):
        """:meth:`decode` of a TopK code from its k values and ids: the sum of k decoder rows per input instead
        of a product with all d_sae rows (32 of 24,576 for ViT-B/32: a thousandth of the work). The weighted sum
        is one ``embedding_bag``, which never materialises the (..., k, d_in) gathered rows: 10 to 100 times
        faster than a batched product of them for a batch of images."""
        k, d_in = indices_NK.shape[-1], self.W_dec.shape[1]
        summed_RD = F.embedding_bag(
            indices_NK.reshape(-1, k), self.W_dec, per_sample_weights=values_NK.reshape(-1, k), mode="sum"
        )
        x_hat_ND = summed_RD.view(*indices_NK.shape[:-1], d_in) + self.b_dec
        return self.unnormalise(x_hat_ND, x_ND)

    def unnormalise(self, x_hat_ND: torch.Tensor, x_ND: torch.Tensor | None) -> torch.Tensor:
        """The reconstruction in the input's own scale (the identity unless the SAE normalises its input)."""
        if self.config.normalize_activations == "none":
            return x_hat_ND
        if x_ND is None:
            raise ValueError(
                f"this SAE normalises each input ({self.config.normalize_activations}): "
                "decode(f, x) needs the input x that was encoded, to undo the normalisation"
            )
        if self.config.normalize_activations == "layer_norm":
            return x_hat_ND * x_ND.std(-1, keepdim=True) + x_ND.mean(-1, keepdim=True)
        return x_hat_ND * self.output_scale(x_ND)

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_ND), x_ND)

    def save(self, directory: str | Path) -> None:
        """Write the SAELens layout, the whole ``SAEConfig`` in cfg.json; ``engine.sae_formats.load_sae`` reads it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CFG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        tensors = {name: p.detach().contiguous().cpu() for name, p in self.named_parameters()}
        save_file(tensors, str(directory / WEIGHTS_FILE))
