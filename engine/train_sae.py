"""Train a sparse autoencoder on any model's site, over a folder of images or the toy world; one process or many.

    python -m engine.train_sae --model toy --site blocks.2.resid_post --data toy:4096 --out /tmp/sae
    python -m engine.train_sae --model open_clip:ViT-B-32@openai --site blocks.10.resid_post \\
        --data /data/images --out /saes/b32 --expansion 32 --k 32 --steps 20000
    accelerate launch --num_processes 4 -m engine.train_sae ...same flags...      # data-parallel

**The objective.** An SAE writes a model's activation x (d_in) as a sparse non-negative code f (d_sae latents)
and reconstructs it, ``x_hat = f @ W_dec + b_dec``, with unit-norm decoder rows (engine/sae.py). It minimises
the squared error, normalised by the data's variance so that the loss reads as the share of variance left
unexplained. Sparsity comes from one of:

* ``topk`` (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): keep the k largest pre-activations
  per token. No penalty to tune, L0 = k exactly.
* ``batchtopk`` (Bussmann et al. 2024): keep the ``k * tokens`` largest pre-activations over the whole batch,
  so a token may use more or fewer than k. It is saved as a TopK SAE with the same k (what the paper does at
  inference without a threshold). Under several processes each selects within its own share of the batch.
* ``relu`` with an L1 penalty on ``f_i * |W_dec[i]|`` (Bricken et al. 2023), divided by the data's standard
  deviation so that ``l1_coefficient`` means the same at any scale: the classic recipe; L0 follows from it.

**Dead latents.** A latent that has not fired for ``dead_after_tokens`` tokens is dead. TopK and BatchTopK add
the AuxK loss (Gao et al.): the ``aux_k`` dead latents with the largest pre-activations reconstruct the main
reconstruction's error, which pulls them back towards the data; weight ``aux_coefficient``.

**Matryoshka** (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka Sparse Autoencoders";
Nabeshima 2024). A plain SAE splits a general concept into narrower ones ("triangle" into "small triangle" and
"large triangle") or lets one latent absorb part of another, because nothing rewards a latent for standing alone.
With ``matryoshka_prefixes`` (e.g. 24, 48, 96, 192, 384: increasing, the last the whole dictionary) the
reconstruction loss is the mean over the nested prefixes of the dictionary of the error when only the prefix's
latents reconstruct the input (the same TopK or BatchTopK code, its latents beyond the prefix set to zero). The
first latents must then reconstruct on their own, which pushes general concepts into them and the refinements into
later ones. AuxK still serves the whole dictionary's error. Only training changes: the SAE is used as an ordinary
TopK SAE, so the saved files are the same. Empty (the default) is the plain loss, exactly.

**Input normalisation.** ``dataset_norm`` scales every activation by one constant so that its mean squared
norm is d_in (SAELens' ``expected_average_only_in``): the learning rate then means the same at every site and
model. The constant is folded into the saved weights (``b_enc`` and ``b_dec`` divided by it; ``f`` is then in
the activation's own units, decoder rows stay unit norm), so the saved SAE reads raw activations.
``layer_norm`` normalises each token and is kept in cfg.json (engine.sae applies it). ``none`` trains on raw
activations.

**Data.** Image ``i`` of the dataset is always the same picture (engine.image_sources). A fixed
``eval_images`` of them (the first of a seeded permutation) are held out for the final metrics; the rest are
visited in a seeded order, epoch after epoch, ``images_per_step`` per step, every token of each image (or a
seeded sample of ``tokens_per_image``). Unreadable files are skipped and counted.

**Several processes** (``accelerate launch``; accelerate.Accelerator). Step s's images are split between the
processes (process r takes every world-th one), gradients are averaged (DDP), and the per-latent firing counts
and the normalisation statistics are summed over processes: with equal token counts per process the update is
the single-process update up to floating-point order, which a test checks (not with ``tokens_per_image``,
which samples per process, nor with unreadable files, which leave the processes unequal token counts).

**Checkpoints.** Every ``checkpoint_every`` steps, ``OUT/checkpoints/step_N/`` holds the SAE in the native
format (usable as it is) and ``trainer_state.safetensors`` (raw parameters, Adam moments, firing counters,
normalisation constants); ``--resume`` continues from the latest, and the continued run equals the run that
never stopped. At the end ``OUT/`` holds cfg.json, sae_weights.safetensors and manifest.json (config, data,
command, metrics on the held-out images: explained variance, L0, dead fraction).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from engine.backends import Backend, load_backend
from engine.errors import UnknownChoiceError, UserInputError, WorkbenchError
from engine.image_sources import ImageSource, parse_source
from engine.registry import parse_model
from engine.report import end_launched_process, print_result
from engine.sae import SAE, SAEConfig

log = logging.getLogger(__name__)

ARCHITECTURES = ("topk", "batchtopk", "relu")
NORMALIZATIONS = ("none", "dataset_norm", "layer_norm")
STATE_FILE, MANIFEST_FILE, CHECKPOINTS = "trainer_state.safetensors", "manifest.json", "checkpoints"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained SAE (the data and the model are named apart)."""

    site: str
    expansion: int = 8
    architecture: str = "topk"
    k: int = 32
    l1_coefficient: float = 5.0
    aux_k: int = 256
    aux_coefficient: float = 1 / 32
    dead_after_tokens: int = 1_000_000
    normalize: str = "dataset_norm"
    lr: float = 4e-4
    steps: int = 1000
    images_per_step: int = 64
    tokens_per_image: int | None = None
    eval_images: int = 256
    calibration_images: int = 256
    checkpoint_every: int = 0
    matryoshka_prefixes: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise UnknownChoiceError("SAE architecture", self.architecture, ARCHITECTURES)
        if self.normalize not in NORMALIZATIONS:
            raise UnknownChoiceError("normalisation", self.normalize, NORMALIZATIONS)
        for name in ("expansion", "k", "steps", "images_per_step", "calibration_images"):
            if getattr(self, name) < 1:
                raise UserInputError(f"{name} must be at least 1; got {getattr(self, name)}")
        if self.eval_images < 0 or self.checkpoint_every < 0:
            raise UserInputError("eval_images and checkpoint_every must be 0 or more")
        if self.matryoshka_prefixes and self.architecture == "relu":
            raise UserInputError("matryoshka_prefixes needs a TopK kind of SAE (topk or batchtopk), not relu")
        object.__setattr__(self, "matryoshka_prefixes", tuple(self.matryoshka_prefixes))  # a JSON list reads back

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


# --- The objective: shared with the toy trainer (engine.toyworld.train_sae), so one recipe serves both ---------


def init_sae(sae: SAE, mean_D: torch.Tensor, generator: torch.Generator) -> None:
    """Random unit decoder rows, the encoder their transpose (a good start for TopK), b_dec the data mean."""
    with torch.no_grad():
        W_dec = torch.randn(sae.config.d_sae, sae.config.d_in, generator=generator)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(mean_D)


def batch_topk(pre_BS: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k * B`` largest (ReLU'd) pre-activations over the whole batch."""
    flat = pre_BS.relu().flatten()
    values, indices = flat.topk(min(k * pre_BS.shape[0], flat.numel()))
    return torch.zeros_like(flat).scatter(0, indices, values).view_as(pre_BS)


def tokens_since_fired(since_S: torch.Tensor, fired_S: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Reset the counter of latents that fired in this batch; add the batch's tokens to the others."""
    return torch.where(fired_S, 0, since_S + n_tokens)


def fired_here(f_BS: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(which latents fired in this batch, how many tokens it held): one process's count."""
    return (f_BS != 0).any(0), f_BS.shape[0]


def check_prefixes(prefixes: tuple[int, ...], d_sae: int) -> None:
    """Matryoshka prefixes must increase and end at the whole dictionary (latents past the last would learn
    nothing from the reconstruction)."""
    increasing = all(b > a for a, b in zip(prefixes, prefixes[1:]))
    if prefixes and (prefixes[-1] != d_sae or prefixes[0] < 1 or not increasing):
        raise UserInputError(
            f"matryoshka_prefixes must be increasing latent counts ending at the dictionary's size {d_sae}; "
            f"got {list(prefixes)}"
        )


def prefix_losses(sae: SAE, x_BD: torch.Tensor, f_BS: torch.Tensor, prefixes: tuple[int, ...], scale: float):
    """The normalised squared error of each prefix's reconstruction, ``f[:, :m] @ W_dec[:m] + b_dec``, (P,)."""
    return torch.stack(
        [(x_BD - f_BS[:, :m] @ sae.W_dec[:m] - sae.b_dec).pow(2).sum(1).mean() / scale for m in prefixes]
    )


def loss_terms(
    sae: SAE,
    x_BD: torch.Tensor,
    scale: float,
    since_fired_S: torch.Tensor,
    dead_after_tokens: int,
    architecture: str = "topk",
    aux_k: int = 64,
    aux_coefficient: float = 1 / 32,
    l1_coefficient: float = 0.0,
    count_fired: Callable[[torch.Tensor], tuple[torch.Tensor, int]] = fired_here,
    matryoshka_prefixes: tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(loss, since_fired_S updated with this batch, parts).

    The loss is the reconstruction error normalised by ``scale`` (the data's variance: mean squared distance to
    the mean), plus AuxK over the latents dead after this batch (TopK kinds) or the L1 penalty (relu). ``x_BD``
    is the input as the SAE sees it (already normalised). ``count_fired`` says which latents fired in the batch
    and on how many tokens: under several processes, summed over all of them. With ``matryoshka_prefixes`` the
    reconstruction term is the mean of the prefixes' errors (the module docstring); ``mse`` stays the whole
    dictionary's."""
    check_prefixes(matryoshka_prefixes, sae.config.d_sae)
    pre_BS = sae.pre_activation(x_BD)
    f_BS = batch_topk(pre_BS, sae.config.k) if architecture == "batchtopk" else sae.activate(pre_BS)
    error_BD = x_BD - sae.decode(f_BS)
    loss = error_BD.pow(2).sum(1).mean() / scale
    parts = {"mse": float(loss.detach())}
    if matryoshka_prefixes:
        losses_P = prefix_losses(sae, x_BD, f_BS, matryoshka_prefixes, scale)
        loss = losses_P.mean()
        parts["mse_first_prefix"] = float(losses_P[0].detach())
    fired_S, n_tokens = count_fired(f_BS)
    since_fired_S = tokens_since_fired(since_fired_S, fired_S, n_tokens)
    dead_S = since_fired_S > dead_after_tokens
    n_dead = int(dead_S.sum())
    if n_dead and architecture != "relu":
        values_BK, indices_BK = pre_BS.masked_fill(~dead_S, float("-inf")).topk(min(aux_k, n_dead), dim=-1)
        aux_BS = torch.zeros_like(pre_BS).scatter(-1, indices_BK, values_BK.relu())
        aux = (error_BD.detach() - aux_BS @ sae.W_dec).pow(2).sum(1).mean() / scale
        loss = loss + aux * aux_coefficient
        parts["aux"] = float(aux.detach())
    if architecture == "relu":
        l1 = (f_BS * sae.W_dec.norm(dim=1)).sum(1).mean() / math.sqrt(scale)
        loss = loss + l1_coefficient * l1
        parts["l1"] = float(l1.detach())
    parts["dead"] = n_dead
    return loss, since_fired_S, parts


def normalise_decoder(sae: SAE) -> None:
    with torch.no_grad():
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))


class TrainingObjective(torch.nn.Module):
    """The SAE with its loss as ``forward``: what accelerate wraps for data-parallel training (DDP averages the
    gradients of whatever the forward used)."""

    def __init__(self, sae: SAE, config: TrainConfig, count_fired: Callable = fired_here):
        super().__init__()
        self.sae, self.config, self.count_fired = sae, config, count_fired

    def forward(self, x_BD: torch.Tensor, since_fired_S: torch.Tensor, scale: float):
        c = self.config
        return loss_terms(
            self.sae, x_BD, scale, since_fired_S, c.dead_after_tokens, c.architecture, c.aux_k,
            c.aux_coefficient, c.l1_coefficient, self.count_fired, c.matryoshka_prefixes,
        )  # fmt: skip


# --- Data ----------------------------------------------------------------------------------------------------


def split_order(n_images: int, config: TrainConfig) -> tuple[list[int], list[int]]:
    """(held-out images, training images), from one seeded permutation."""
    order = np.random.default_rng(config.seed).permutation(n_images).tolist()
    n_eval = min(config.eval_images, n_images // 2)
    if n_images - n_eval < config.images_per_step:
        raise UserInputError(
            f"the dataset holds {n_images} images: too few for {config.images_per_step} per step after "
            f"holding out {n_eval}; give more images or a smaller --images-per-step"
        )
    return order[:n_eval], order[n_eval:]


def step_images(train: list[int], step: int, config: TrainConfig) -> list[int]:
    """The dataset positions of step ``step``'s images: epochs of a seeded shuffle, ``images_per_step`` a step."""
    per_epoch = len(train) // config.images_per_step
    epoch, within = divmod(step, per_epoch)
    order = np.random.default_rng([config.seed, epoch + 1]).permutation(len(train))
    chosen = order[within * config.images_per_step : (within + 1) * config.images_per_step]
    return [train[i] for i in chosen]


@torch.no_grad()
def site_tokens(
    backend: Backend, source: ImageSource, positions: list[int], site: str, device: torch.device
) -> tuple[torch.Tensor, list[int]]:
    """(x_ND, unreadable): every token at ``site`` of the readable images among ``positions`` (float32), and the
    positions of the files that could not be read."""
    images = [source.load(i) for i in positions]
    readable = [im for im in images if im is not None]
    unreadable = [i for i, im in zip(positions, images) if im is None]
    if not readable:
        return torch.zeros(0, backend.d_model, device=device), unreadable
    acts_BTD = backend.prefix(backend.pixels(readable).to(device), site).float()
    return acts_BTD.flatten(0, 1), unreadable


class Trainer:
    """One training run: the model, the data, the SAE, its optimiser and counters, on one process of ``world``."""

    def __init__(
        self, backend: Backend, source: ImageSource, config: TrainConfig, accelerator=None, model_name: str = ""
    ):
        from accelerate import Accelerator  # a listed requirement; imported here so the engine loads without it

        self.accelerator = accelerator or Accelerator(cpu=backend.device.type == "cpu")
        self.backend, self.source, self.config = backend, source, config
        self.device = self.accelerator.device
        backend.block_index(config.site)  # an unknown site fails here, with the valid ones
        self.eval_positions, self.train_positions = split_order(len(source), config)
        d_in = backend.d_model
        self.sae = SAE(
            SAEConfig(
                d_in,
                d_in * config.expansion,
                "relu" if config.architecture == "relu" else "topk",
                config.site,
                k=config.k if config.architecture != "relu" else None,
                model_name=model_name,
                normalize_activations="layer_norm" if config.normalize == "layer_norm" else "none",
            )
        )
        check_prefixes(config.matryoshka_prefixes, self.sae.config.d_sae)  # before any image is read
        self.step, self.tokens_seen, self.unreadable = 0, 0, set()
        self.since_fired_S = torch.zeros(self.sae.config.d_sae)
        self.input_scale, self.loss_scale = 1.0, 1.0

    # The processes' shares of a step, and sums over processes.
    def my_share(self, positions: list[int]) -> list[int]:
        return positions[self.accelerator.process_index :: self.accelerator.num_processes]

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return tensor
        return self.accelerator.reduce(tensor.to(self.device), reduction="sum").cpu()

    def tokens(self, positions: list[int], step: int | None = None) -> torch.Tensor:
        """This process's share of ``positions`` as SAE inputs (normalised); unreadable files are remembered."""
        mine = self.my_share(positions)
        x_ND, unreadable = site_tokens(self.backend, self.source, mine, self.config.site, self.device)
        self.unreadable.update(unreadable)
        if self.config.tokens_per_image and step is not None and len(x_ND):
            # a seeded sample per step and process (so a run with several processes samples other tokens)
            seed = (self.config.seed * 1_000_003 + step) * 1_009 + self.accelerator.process_index
            keep = torch.randperm(len(x_ND), generator=torch.Generator().manual_seed(seed))
            keep = keep[: self.config.tokens_per_image * (len(mine) - len(unreadable))]
            x_ND = x_ND[keep.to(x_ND.device)]
        return self.sae.normalize(x_ND * self.input_scale)

    def calibrate(self) -> None:
        """Normalisation constant, loss scale and b_dec's start from the first training images (all processes)."""
        positions = self.train_positions[: self.config.calibration_images]
        x_ND = self.tokens(positions).double().cpu()
        d_in = self.backend.d_model
        stats = self.all_sum(torch.cat([torch.tensor([len(x_ND), float(x_ND.pow(2).sum())]), x_ND.sum(0)]))
        n, square_sum, mean_D = float(stats[0]), float(stats[1]), stats[2:] / stats[0]
        if self.config.normalize == "dataset_norm":
            self.input_scale = math.sqrt(d_in / (square_sum / n))
        s = self.input_scale
        self.loss_scale = (square_sum / n - float(mean_D.pow(2).sum())) * s * s  # mean |x - mean|^2 after scaling
        init_sae(self.sae, (mean_D * s).float(), torch.Generator().manual_seed(self.config.seed))

    def prepare(self, state: dict[str, torch.Tensor] | None = None) -> None:
        """Optimiser and (under several processes) DDP; from a checkpoint's ``state`` when resuming."""
        if state is not None:
            self.load_state(state)
        self.sae.to(self.device)
        self.adam = torch.optim.Adam(self.sae.parameters(), lr=self.config.lr)
        if state is not None:
            for name, p in self.sae.named_parameters():
                self.adam.state[p] = {
                    "step": state[f"adam.{name}.step"].reshape(()).clone(),
                    "exp_avg": state[f"adam.{name}.exp_avg"].to(self.device).clone(),
                    "exp_avg_sq": state[f"adam.{name}.exp_avg_sq"].to(self.device).clone(),
                }
        objective = TrainingObjective(self.sae, self.config, self.count_fired)
        self.objective, self.optimizer = self.accelerator.prepare(objective, self.adam)

    def count_fired(self, f_BS: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Which latents fired in this step on any process, and the step's tokens over all processes."""
        counts = self.all_sum(torch.cat([torch.tensor([f_BS.shape[0]]), (f_BS != 0).sum(0).cpu()]).double())
        return (counts[1:] > 0).to(f_BS.device), int(counts[0])

    def train_step(self) -> dict[str, float]:
        positions = step_images(self.train_positions, self.step, self.config)
        x_BD = self.tokens(positions, self.step)
        since_S = self.since_fired_S.to(self.device)
        loss, since_S, parts = self.objective(x_BD, since_S, self.loss_scale)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.optimizer.step()
        normalise_decoder(self.sae)
        self.since_fired_S = since_S.cpu()
        self.tokens_seen += int(self.all_sum(torch.tensor([len(x_BD)], dtype=torch.float64)))
        self.step += 1
        return {"loss": float(loss.detach()), **parts}

    # --- Checkpoints: the raw training state, and the folded SAE beside it ------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"param.{k}": v.detach().cpu().contiguous() for k, v in self.sae.state_dict().items()}
        for name, p in self.sae.named_parameters():
            state = self.adam.state.get(p, {})
            for key in ("step", "exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"adam.{name}.{key}"] = (
                        torch.as_tensor(state[key])
                        .detach()
                        .cpu()
                        .reshape(-1 if key == "step" else state[key].shape)
                        .contiguous()
                    )
        tensors["since_fired_S"] = self.since_fired_S.clone()
        counters = [self.step, self.tokens_seen, self.input_scale, self.loss_scale]
        tensors["counters"] = torch.tensor(counters, dtype=torch.float64)
        tensors["unreadable"] = self.unreadable_mask().to(torch.uint8)
        return tensors

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.sae.load_state_dict({k[len("param.") :]: v for k, v in state.items() if k.startswith("param.")})
        self.since_fired_S = state["since_fired_S"].clone()
        step, tokens, self.input_scale, self.loss_scale = state["counters"].tolist()
        self.step, self.tokens_seen = int(step), int(tokens)
        self.unreadable = set(state["unreadable"].nonzero().flatten().tolist())

    def folded_sae(self) -> SAE:
        """The SAE that reads raw activations: the dataset normalisation folded into b_enc and b_dec (see the
        module docstring: f = act((x - b_dec/s) W_enc + b_enc/s) is the trained code divided by s)."""
        sae = SAE(self.sae.config)
        sae.load_state_dict({k: v.detach().cpu().clone() for k, v in self.sae.state_dict().items()})
        with torch.no_grad():
            sae.b_enc.div_(self.input_scale)
            sae.b_dec.div_(self.input_scale)
        return sae.eval().requires_grad_(False)

    def unreadable_mask(self) -> torch.Tensor:
        """(N,) bool: the dataset's files found unreadable so far, on any process."""
        mask = torch.zeros(len(self.source), dtype=torch.float32)
        mask[list(self.unreadable)] = 1
        return self.all_sum(mask) > 0

    def save_checkpoint(self, out_dir: Path) -> Path:
        directory = out_dir / CHECKPOINTS / f"step_{self.step:08d}"
        state = self.state_tensors()  # on every process: it sums the unreadable files over them
        if self.accelerator.is_main_process:
            self.folded_sae().save(directory)
            save_file(state, str(directory / STATE_FILE))
            (directory / "train_config.json").write_text(json.dumps(asdict(self.config), indent=2))
        self.accelerator.wait_for_everyone()
        return directory

    # --- Final metrics on the held-out images -----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, sae: SAE, batch_images: int = 64) -> dict[str, float]:
        """Explained variance (engine.resident's definition), mean L0 per token and the share of latents that never
        fire, on the held-out images; summed over processes."""
        sae = sae.to(self.device)
        totals = torch.zeros(4, dtype=torch.float64)  # tokens, sum |x|^2, sum |error|^2, sum L0
        sum_D = torch.zeros(sae.config.d_in, dtype=torch.float64)
        fired_S = torch.zeros(sae.config.d_sae, dtype=torch.float64)
        for start in range(0, len(self.eval_positions), batch_images):
            positions = self.my_share(self.eval_positions[start : start + batch_images])
            x_ND, unreadable = site_tokens(self.backend, self.source, positions, self.config.site, self.device)
            self.unreadable.update(unreadable)
            f_NS = sae.encode(x_ND)
            error_ND = x_ND - sae.decode(f_NS, x_ND)
            totals += torch.tensor(
                [
                    len(x_ND),
                    float(x_ND.double().pow(2).sum()),
                    float(error_ND.double().pow(2).sum()),
                    float((f_NS != 0).sum()),
                ],
                dtype=torch.float64,
            )
            sum_D += x_ND.double().sum(0).cpu()
            fired_S += (f_NS != 0).sum(0).double().cpu()
        summed = self.all_sum(torch.cat([totals, sum_D, fired_S]))
        n, square_sum, error_sum, l0_sum = summed[:4].tolist()
        if n == 0:
            return {}
        mean_D = summed[4 : 4 + sae.config.d_in] / n
        total_variance = square_sum - n * float(mean_D.pow(2).sum())
        return {
            "explained_variance": round(1 - error_sum / total_variance, 4),
            "l0": round(l0_sum / n, 2),
            "dead_fraction": round(float((summed[4 + sae.config.d_in :] == 0).double().mean()), 4),
            "eval_tokens": int(n),
        }


# --- The run ---------------------------------------------------------------------------------------------------


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((out_dir / CHECKPOINTS).glob("step_*/" + STATE_FILE))
    return found[-1].parent if found else None


def check_resumable(directory: Path, config: TrainConfig) -> None:
    """A run resumes only with the recipe it started with (``steps`` may grow: that extends the run)."""
    saved = json.loads((directory / "train_config.json").read_text())
    wanted = json.loads(json.dumps(asdict(config)))  # tuples as the JSON lists they were saved as
    differ = [k for k, v in wanted.items() if k != "steps" and saved.get(k) != v]
    if differ:
        raise UserInputError(
            f"cannot resume from {directory}: it was trained with other settings ({', '.join(differ)}); "
            "use the same flags, or another --out"
        )


def progress(steps: range, enabled: bool) -> Iterator[int]:
    """A progress bar (tqdm, when installed) on the main process; log lines otherwise."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if enabled and tqdm is not None:
        yield from tqdm(steps, initial=steps.start, total=steps.stop, desc="SAE steps", file=sys.stderr)
    else:
        yield from steps


def train(
    backend: Backend,
    source: ImageSource,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    command: str = "",
    model_name: str = "",
    accelerator=None,
    stop_after: int | None = None,
) -> dict:
    """Train (or resume) an SAE and write it to ``out_dir`` in the native format with its manifest; returns the
    manifest. ``stop_after`` ends the run after that many steps without the final save (tests of resuming)."""
    out_dir = Path(out_dir)
    start = time.time()
    trainer = Trainer(backend, source, config, accelerator, model_name)
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        check_resumable(checkpoint, config)
        trainer.prepare(load_file(str(checkpoint / STATE_FILE)))
        log.info("resumed from %s at step %d", checkpoint, trainer.step)
    else:
        trainer.calibrate()
        trainer.prepare()
    main = trainer.accelerator.is_main_process
    last: dict[str, float] = {}
    for step in progress(range(trainer.step, config.steps), main):
        last = trainer.train_step()
        if step % max(1, config.steps // 20) == 0 or step == config.steps - 1:
            log.info("step %d/%d %s", step + 1, config.steps, {k: round(v, 4) for k, v in last.items()})
        if config.checkpoint_every and trainer.step % config.checkpoint_every == 0 and trainer.step < config.steps:
            trainer.save_checkpoint(out_dir)
        if stop_after is not None and trainer.step >= stop_after:
            return {"stopped_at": trainer.step}
    sae = trainer.folded_sae()
    metrics = trainer.evaluate(sae)
    unreadable = trainer.unreadable_mask()
    seconds = time.time() - start
    manifest = {
        "format": "native SAE (cfg.json + sae_weights.safetensors), engine.train_sae",
        "model": model_name,
        "site": config.site,
        "data": source.describe(),
        "data_images": len(source),
        "held_out_images": len(trainer.eval_positions),
        "skipped_unreadable": int(unreadable.sum()),
        "skipped_examples": [source.name(i) for i in unreadable.nonzero().flatten().tolist()[:10]],
        "processes": trainer.accelerator.num_processes,
        "config": asdict(config),
        "input_scale": trainer.input_scale,
        "tokens_trained": trainer.tokens_seen,
        "dead_latents_at_end_of_training": int((trainer.since_fired_S > config.dead_after_tokens).sum()),
        "metrics": metrics,
        "seconds": round(seconds, 1),
        "tokens_per_s": round(trainer.tokens_seen / seconds, 1),
        "command": command,
    }
    if main:
        sae.save(out_dir)
        (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    trainer.accelerator.wait_for_everyone()
    log.info("SAE written to %s: %s", out_dir, metrics)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="toy | open_clip:NAME@TAG | open_clip:local-dir:/p | hf:ID")
    parser.add_argument("--data", required=True, help="a folder of images (recursive), or toy:N[@SEED]")
    parser.add_argument("--out", required=True, help="directory for the SAE, its manifest and checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--device", help="cpu or cuda (default: what accelerate chooses)")
    defaults = TrainConfig(site="")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "site":
            parser.add_argument(flag, required=True, help="e.g. blocks.10.resid_post")
        elif f.name in ("architecture", "normalize"):
            choices = ARCHITECTURES if f.name == "architecture" else NORMALIZATIONS
            parser.add_argument(flag, default=getattr(defaults, f.name), choices=choices)
        elif f.name == "matryoshka_prefixes":
            parser.add_argument(
                flag, type=int, nargs="+", default=(),
                help="Matryoshka loss over these nested prefixes of the dictionary, e.g. 256 1024 4096 (the last "
                "the whole dictionary: d_in * expansion); default: the plain loss",
            )  # fmt: skip
        else:
            kind = float if isinstance(getattr(defaults, f.name), float) else int
            parser.add_argument(flag, type=kind, default=getattr(defaults, f.name))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    config = TrainConfig.from_dict(vars(args))
    spec = parse_model(args.model)
    device = torch.device(args.device) if args.device else None
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device is not None and device.type == "cpu")
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)  # one process reports
    torch.manual_seed(config.seed)  # a model with random weights (open_clip:NAME@random) is then one model everywhere
    backend = load_backend(spec, device or accelerator.device)
    command = "python -m engine.train_sae " + shlex.join(sys.argv[1:] if argv is None else argv)
    manifest = train(
        backend, parse_source(args.data), config, args.out, args.resume, command, spec.display_name, accelerator
    )
    if accelerator.is_main_process:
        print_result(manifest["metrics"], as_json=True)
    end_launched_process(accelerator.num_processes)


if __name__ == "__main__":
    try:
        main()
    except (WorkbenchError, ValueError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None  # the message says what to fix; no traceback
