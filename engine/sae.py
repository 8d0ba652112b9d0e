"""Sparse autoencoders: the module, and native save / load in the SAELens layout.

An SAE reads a model's activation ``x`` (d_in) at one site and writes it as a sparse, non-negative code
``f`` (d_sae latents) whose decoder rows are the concept directions:

    f = act((x - b_dec) @ W_enc + b_enc)            (b_dec subtracted only if apply_b_dec_to_input)
    x_hat = f @ W_dec + b_dec
    error = x - x_hat

``act`` is TopK (keep the k largest pre-activations, Gao et al. 2024), ReLU, or JumpReLU (zero below a
per-latent threshold, Rajamanoharan et al. 2024). The engine never replaces ``x`` by ``x_hat``: every
analysis keeps ``error`` (SAELens' ``use_error_term``), so that inserting the SAE changes nothing and an edit
of latent i moves the activation by exactly ``(f_i' - f_i) * W_dec[i]``.

On disk (SAELens layout): ``cfg.json`` plus ``sae_weights.safetensors`` holding ``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]`` and, for JumpReLU, ``threshold [d_sae]``.

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
from safetensors.torch import load_file, save_file

ARCHITECTURES = ("topk", "relu", "jumprelu")
CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"


class SAEFormatError(ValueError):
    """A file or directory that is not an SAE this module can read; the message says what was found."""


@dataclass(frozen=True)
class SAEConfig:
    d_in: int
    d_sae: int
    architecture: str
    hook_name: str
    k: int | None = None
    apply_b_dec_to_input: bool = True
    model_name: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SAEFormatError(f"unknown SAE architecture {self.architecture!r}; valid: {', '.join(ARCHITECTURES)}")
        if self.architecture == "topk" and not (self.k and 0 < self.k <= self.d_sae):
            raise SAEFormatError(f"a topk SAE needs 0 < k <= d_sae ({self.d_sae}); got k={self.k}")

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

    def pre_activation(self, x_ND: torch.Tensor) -> torch.Tensor:
        if self.config.apply_b_dec_to_input:
            x_ND = x_ND - self.b_dec
        return x_ND @ self.W_enc + self.b_enc

    def activate(self, pre_NS: torch.Tensor) -> torch.Tensor:
        if self.config.architecture == "topk":
            values_NK, indices_NK = pre_NS.topk(self.config.k, dim=-1)
            return torch.zeros_like(pre_NS).scatter(-1, indices_NK, values_NK.relu())
        if self.config.architecture == "jumprelu":
            return pre_NS * (pre_NS > self.threshold)
        return pre_NS.relu()

    def encode(self, x_ND: torch.Tensor) -> torch.Tensor:
        """Latent activations f, (..., d_sae)."""
        return self.activate(self.pre_activation(x_ND))

    def decode(self, f_NS: torch.Tensor) -> torch.Tensor:
        return f_NS @ self.W_dec + self.b_dec

    def forward(self, x_ND: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x_ND))

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CFG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2))
        tensors = {name: p.detach().contiguous().cpu() for name, p in self.named_parameters()}
        save_file(tensors, str(directory / WEIGHTS_FILE))

    @classmethod
    def load(cls, directory: str | Path) -> SAE:
        """Read an SAE saved in the SAELens layout (safetensors only: nothing is unpickled)."""
        directory = Path(directory)
        cfg_path, weights_path = directory / CFG_FILE, directory / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights_path.is_file():
            found = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else "no such directory"
            raise SAEFormatError(f"{directory}: expected {CFG_FILE} and {WEIGHTS_FILE}; found {found}")
        try:
            config = SAEConfig.from_dict(json.loads(cfg_path.read_text()))
        except json.JSONDecodeError as error:
            raise SAEFormatError(f"{cfg_path} is not valid JSON: {error}") from error
        sae = cls(config)
        tensors = load_file(str(weights_path))
        expected = {name: tuple(p.shape) for name, p in sae.named_parameters()}
        found = {name: tuple(t.shape) for name, t in tensors.items()}
        if any(found.get(name) != shape for name, shape in expected.items()):
            raise SAEFormatError(f"{weights_path}: expected tensors {expected}; found {found}")
        with torch.no_grad():
            for name, param in sae.named_parameters():
                param.copy_(tensors[name])
        return sae.requires_grad_(False).eval()
