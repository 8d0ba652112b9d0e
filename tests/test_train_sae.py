"""engine.train_sae: two processes equal one, a resumed run equals one that never stopped, the saved (folded)
SAE equals the one trained on normalised inputs, unreadable files are skipped and counted."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine import train_sae
from engine.backends import load_backend
from engine.image_sources import FolderImages, ToyImages
from engine.sae_formats import load_sae
from engine.specs import ModelSpec
from engine.toyworld import render

ROOT = Path(__file__).resolve().parent.parent
SITE = "blocks.2.resid_post"
TINY = dict(site=SITE, expansion=2, k=8, steps=6, images_per_step=8, eval_images=16, calibration_images=32)
TINY_FLAGS = "--site blocks.2.resid_post --expansion 2 --k 8 --steps 6 --images-per-step 8 --eval-images 16"
TINY_FLAGS += " --calibration-images 32 --dead-after-tokens 600 --aux-k 16"


@pytest.fixture(scope="module")
def backend():
    return load_backend(ModelSpec.toy(), torch.device("cpu"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(backend, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) trains the SAE that one process trains on the same data."""
    config = train_sae.TrainConfig(**TINY, dead_after_tokens=600, aux_k=16)
    single = train_sae.train(backend, ToyImages(96, 3), config, tmp_path / "one")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    command += ["--main_process_port", str(free_port()), "-m", "engine.train_sae", "--model", "toy"]
    command += ["--data", "toy:96@3", "--out", str(tmp_path / "two"), "--device", "cpu", *TINY_FLAGS.split()]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["tokens_trained"] == single["tokens_trained"]
    assert single["dead_latents_at_end_of_training"] > 0  # the AuxK path ran too
    one, two = (load_file(str(tmp_path / d / "sae_weights.safetensors")) for d in ("one", "two"))
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=1e-4), name
    assert manifest["metrics"]["explained_variance"] == pytest.approx(single["metrics"]["explained_variance"], abs=1e-3)


def test_resumed_run_equals_uninterrupted_run(backend, tmp_path):
    config = train_sae.TrainConfig(**TINY, checkpoint_every=3, dead_after_tokens=600, aux_k=16)
    source = ToyImages(64, 4)
    train_sae.train(backend, source, config, tmp_path / "straight")
    stopped = train_sae.train(backend, source, config, tmp_path / "resumed", stop_after=3)
    assert stopped == {"stopped_at": 3} and train_sae.latest_checkpoint(tmp_path / "resumed").name == "step_00000003"
    train_sae.train(backend, source, config, tmp_path / "resumed", resume=True)
    straight, resumed = (load_file(str(tmp_path / d / "sae_weights.safetensors")) for d in ("straight", "resumed"))
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    with pytest.raises(ValueError, match="other settings .*k"):
        train_sae.train(backend, source, train_sae.TrainConfig(**{**TINY, "k": 4}), tmp_path / "resumed", resume=True)


def test_saved_sae_reads_raw_activations(backend, tmp_path):
    """dataset_norm trains on s * x; the saved SAE, with s folded in, gives the trained code / s on raw x and the
    same reconstruction (divided by s)."""
    trainer = train_sae.Trainer(backend, ToyImages(64, 5), train_sae.TrainConfig(**TINY))
    trainer.calibrate()
    trainer.prepare()
    for _ in range(3):
        trainer.train_step()
    s = trainer.input_scale
    assert s != pytest.approx(1.0)
    trainer.folded_sae().save(tmp_path)
    saved = load_sae(tmp_path)
    x_ND, _ = train_sae.site_tokens(backend, trainer.source, [0, 1], SITE, torch.device("cpu"))
    with torch.no_grad():
        trained_f = trainer.sae.encode(x_ND * s)
        assert torch.allclose(saved.encode(x_ND), trained_f / s, atol=1e-5)
        assert torch.allclose(saved(x_ND), trainer.sae(x_ND * s) / s, atol=1e-4)
        assert saved.W_dec.norm(dim=1).sub(1).abs().max() < 1e-5


def test_unreadable_files_are_skipped_and_counted(backend, tmp_path):
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    for i, (scene, seed) in enumerate(render.sample_scenes(40, 6)):
        render.render(scene, seed)[0].save(data / ("nested" if i % 2 else "") / f"{i:02d}.png")
    (data / "notes.txt").write_text("not an image")
    (data / "truncated.png").write_bytes((data / "00.png").read_bytes()[:60])
    outside = tmp_path / "outside.png"
    outside.write_bytes((data / "00.png").read_bytes())
    (data / "link.png").symlink_to(outside)  # leads outside the folder: not part of the dataset
    source = FolderImages(data)
    assert len(source) == 42
    # every file is visited: 8 held out, the other 34 all in the calibration
    config = train_sae.TrainConfig(**{**TINY, "steps": 2, "eval_images": 8, "calibration_images": 34})
    manifest = train_sae.train(backend, source, config, tmp_path / "sae")
    assert manifest["skipped_unreadable"] == 2
    assert sorted(manifest["skipped_examples"]) == ["notes.txt", "truncated.png"]
    assert manifest["metrics"]["l0"] == pytest.approx(8.0)


@pytest.mark.parametrize("architecture", ["batchtopk", "relu"])
def test_other_architectures_train(backend, tmp_path, architecture):
    config = train_sae.TrainConfig(**{**TINY, "architecture": architecture, "steps": 4, "l1_coefficient": 0.1})
    manifest = train_sae.train(backend, ToyImages(48, 7), config, tmp_path)
    sae = load_sae(tmp_path)
    assert sae.config.architecture == ("relu" if architecture == "relu" else "topk")
    assert 0 < manifest["metrics"]["l0"] and manifest["metrics"]["explained_variance"] > -1


def test_batch_topk_keeps_k_per_token_on_average():
    pre_BS = torch.randn(5, 20)
    f_BS = train_sae.batch_topk(pre_BS, 3)
    assert int((f_BS != 0).sum()) == 15  # k * B over the batch, however they fall on the tokens
    assert torch.equal(f_BS[f_BS != 0].sort().values, pre_BS.flatten().topk(15).values.relu().sort().values)


def test_tokens_per_image_samples_that_many(backend):
    trainer = train_sae.Trainer(backend, ToyImages(40, 8), train_sae.TrainConfig(**{**TINY, "tokens_per_image": 5}))
    x_ND = trainer.tokens(train_sae.step_images(trainer.train_positions, 0, trainer.config), step=0)
    assert x_ND.shape == (5 * 8, 96)
    again = trainer.tokens(train_sae.step_images(trainer.train_positions, 0, trainer.config), step=0)
    assert torch.equal(x_ND, again)  # seeded by the step


def test_toy_trainer_keeps_the_recipe_of_the_shipped_toy_sae():
    """engine.toyworld.train_sae.fit_sae runs on engine.train_sae's objective; this is the loop the shipped toy SAE
    was trained with, written out without it: the two must give the same weights, bit for bit (AuxK included)."""
    from engine.sae import SAE, SAEConfig
    from engine.toyworld.train_sae import ToySAEConfig, fit_sae

    generator = torch.Generator().manual_seed(0)
    x_ND = torch.randn(2000, 96, generator=generator) @ torch.randn(96, 96, generator=generator) * 0.3 + 1.0
    config = ToySAEConfig(steps=10, batch_tokens=128, dead_after_tokens=200, k=2, aux_k=16)

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    sae = SAE(SAEConfig(96, 384, "topk", config.site, k=config.k, model_name="toy_clip"))
    with torch.no_grad():
        W_dec = torch.randn(384, 96, generator=generator)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(x_ND.mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    since_fired, dead_seen = torch.zeros(384), 0
    scale = float((x_ND - x_ND.mean(0)).pow(2).sum(1).mean())
    for _ in range(config.steps):
        x_BD = x_ND[torch.randint(len(x_ND), (config.batch_tokens,), generator=generator)]
        pre_BS = sae.pre_activation(x_BD)
        f_BS = sae.activate(pre_BS)
        error_BD = x_BD - sae.decode(f_BS)
        loss = error_BD.pow(2).sum(1).mean() / scale
        since_fired = torch.where((f_BS > 0).any(0), 0, since_fired + config.batch_tokens)
        dead_S = since_fired > config.dead_after_tokens
        if dead_S.any():
            dead_seen += 1
            values_BK, indices_BK = pre_BS.masked_fill(~dead_S, float("-inf")).topk(min(16, int(dead_S.sum())), -1)
            aux_BS = torch.zeros_like(pre_BS).scatter(-1, indices_BK, values_BK.relu())
            loss = loss + (error_BD.detach() - aux_BS @ sae.W_dec).pow(2).sum(1).mean() / scale / 32
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True))
    assert dead_seen > 0
    trained = fit_sae(x_ND, config)
    for name, reference in sae.state_dict().items():
        assert torch.equal(trained.state_dict()[name], reference), name


def test_matryoshka_with_the_whole_dictionary_as_one_prefix_is_the_plain_loss():
    from engine.sae import SAE, SAEConfig

    generator = torch.Generator().manual_seed(3)
    sae = SAE(SAEConfig(16, 64, "topk", SITE, k=4))
    train_sae.init_sae(sae, torch.zeros(16), generator)
    x_BD = torch.randn(32, 16, generator=generator)
    since_S = torch.zeros(64).index_fill(0, torch.arange(40), 10_000)  # dead latents: AuxK is on
    results = []
    for prefixes in ((), (64,)):
        sae.zero_grad()
        loss, since, parts = train_sae.loss_terms(sae, x_BD, 2.0, since_S, 100, aux_k=8, matryoshka_prefixes=prefixes)
        loss.backward()
        results.append((loss.detach(), since, parts["mse"], parts["aux"], sae.W_dec.grad.clone()))
    for plain, nested in zip(*results):
        assert torch.equal(torch.as_tensor(plain), torch.as_tensor(nested))


def test_matryoshka_loss_is_the_mean_of_the_prefixes_errors_with_the_code_cut_there():
    from engine.sae import SAE, SAEConfig

    generator = torch.Generator().manual_seed(4)
    sae = SAE(SAEConfig(16, 64, "topk", SITE, k=6))
    train_sae.init_sae(sae, torch.randn(16, generator=generator), generator)
    x_BD = torch.randn(32, 16, generator=generator)
    loss, _, parts = train_sae.loss_terms(sae, x_BD, 3.0, torch.zeros(64), 10**9, matryoshka_prefixes=(4, 16, 64))
    f_BS = sae.encode(x_BD)
    reference = []
    for m in (4, 16, 64):  # written without prefix_losses: zero the code past the prefix, decode as usual
        cut_BS = f_BS.clone()
        cut_BS[:, m:] = 0
        reference.append(float((x_BD - sae.decode(cut_BS)).pow(2).sum(1).mean()) / 3.0)
    assert float(loss) == pytest.approx(sum(reference) / 3, rel=1e-5)
    assert parts["mse_first_prefix"] == pytest.approx(reference[0], rel=1e-5)
    assert parts["mse"] == pytest.approx(reference[-1], rel=1e-5)
    assert reference[0] > reference[-1]  # the first 4 latents alone reconstruct worse: the test can tell them apart


@pytest.mark.parametrize("prefixes", [(16, 8, 64), (8, 32), (0, 64)])
def test_matryoshka_prefixes_must_increase_to_the_whole_dictionary(prefixes):
    from engine.errors import UserInputError

    with pytest.raises(UserInputError, match="increasing latent counts ending at the dictionary's size 64"):
        train_sae.check_prefixes(prefixes, 64)
    with pytest.raises(UserInputError, match="TopK kind"):
        train_sae.TrainConfig(site=SITE, architecture="relu", matryoshka_prefixes=(8, 64))


def test_matryoshka_training_makes_the_first_latents_reconstruct_alone():
    """The point of the nested loss: trained with it, the first 8 of 64 latents reconstruct the data on their own
    far better than the first 8 of a plain SAE (which are 8 arbitrary latents of a split dictionary), at a
    similar whole-dictionary error. Data: 8 general directions, each refined by one of 4 variants of its own."""
    from dataclasses import replace

    from engine.toyworld.train_sae import ToySAEConfig, fit_sae

    generator = torch.Generator().manual_seed(5)
    parents_PD = torch.randn(8, 16, generator=generator)
    children_PCD = 0.5 * torch.randn(8, 4, 16, generator=generator)
    parent_N = torch.randint(8, (2000,), generator=generator)
    child_N = torch.randint(4, (2000,), generator=generator)
    size_N1 = 1 + torch.rand(2000, 1, generator=generator)
    x_ND = size_N1 * (parents_PD[parent_N] + children_PCD[parent_N, child_N])
    config = ToySAEConfig(expansion=4, k=2, steps=200, batch_tokens=128, lr=3e-3, dead_after_tokens=1000, aux_k=8)

    def explained(sae, latents: int) -> float:
        f_NS = sae.encode(x_ND)
        f_NS[:, latents:] = 0
        return 1 - float((x_ND - sae.decode(f_NS)).pow(2).sum()) / float((x_ND - x_ND.mean(0)).pow(2).sum())

    plain = fit_sae(x_ND, config)
    nested = fit_sae(x_ND, replace(config, matryoshka_prefixes=(8, 64)))
    assert explained(nested, 8) > explained(plain, 8) + 0.15  # measured: 0.25 against 0.05
    assert explained(nested, 64) > explained(plain, 64) - 0.05  # measured: 0.960 against 0.967


def test_matryoshka_from_the_command_line_is_saved_and_resumes(tmp_path, capsys):
    flags = [*TINY_FLAGS.split(), "--model", "toy", "--data", "toy:48@7", "--out", str(tmp_path), "--device", "cpu"]
    flags += ["--matryoshka-prefixes", "48", "192", "--checkpoint-every", "3"]
    train_sae.main(flags)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["config"]["matryoshka_prefixes"] == [48, 192]
    assert load_sae(tmp_path).config.architecture == "topk"  # an ordinary TopK SAE at inference
    train_sae.main([*flags, "--resume"])  # the saved list reads as the same recipe as the flags' tuple
    with pytest.raises(ValueError, match="other settings .*matryoshka_prefixes"):
        train_sae.main([*flags, "--matryoshka-prefixes", "96", "192", "--resume"])  # the last flag wins
