"""Model and SAE sources: the command-line syntax, allowed directories, and failing fast without a hub."""

import time

import pytest

from engine.backends import ModelUnavailableError
from engine.registry import parse_model, parse_sae, preset
from engine.resident import load_workbench
from engine.sources import AllowedDirs, PathNotAllowedError, hub_guard, resolve_sae_source
from engine.specs import ModelSpec, SAESpec


def test_model_syntax():
    assert parse_model("toy") == ModelSpec.toy()
    assert parse_model("open_clip:ViT-B-16@openai") == ModelSpec("open_clip", "ViT-B-16", "openai")
    assert parse_model("open_clip:ViT-B-32@random").pretrained is None
    assert parse_model("open_clip:hf-hub:laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K").pretrained is None
    assert parse_model("hf:openai/clip-vit-base-patch32") == ModelSpec("hf_clip", "openai/clip-vit-base-patch32")
    with pytest.raises(ValueError, match="valid: toy, open_clip, hf"):
        parse_model("timm:vit")
    with pytest.raises(ValueError, match="needs a pretrained tag"):
        parse_model("open_clip:ViT-B-32")


def test_sae_syntax():
    assert parse_sae("/x/sae.pt@blocks.3.resid_post") == SAESpec("/x/sae.pt", "blocks.3.resid_post")
    assert parse_sae("hf:o/r/layer_10") == SAESpec("hf:o/r/layer_10")
    with pytest.raises(ValueError, match="empty SAE"):
        parse_sae("  ")
    with pytest.raises(ValueError, match="valid: toy"):
        preset("no-such-preset")


def test_paths_outside_the_allowed_directories_are_refused(tmp_path):
    inside, outside = tmp_path / "allowed", tmp_path / "elsewhere"
    inside.mkdir(), outside.mkdir()
    (outside / "sae.pt").write_bytes(b"x")
    (inside / "link.pt").symlink_to(outside / "sae.pt")
    allowed = AllowedDirs.default([inside])
    assert allowed.check(inside) == inside.resolve()
    for path in (outside / "sae.pt", inside / "link.pt", inside / ".." / "elsewhere" / "sae.pt"):
        with pytest.raises(PathNotAllowedError, match="--allow-dir"):
            allowed.check(path)
    with pytest.raises(PathNotAllowedError):
        load_workbench(ModelSpec.toy(), SAESpec(str(outside)), "cpu", allowed=allowed)


def test_operator_named_paths_are_allowed(tmp_path):
    assert AllowedDirs.default().with_paths([tmp_path]).check(tmp_path / "a" / "b") == (tmp_path / "a" / "b")


@pytest.fixture
def unreachable_hub(monkeypatch):
    """A hub that is not offline by configuration but cannot be reached (a closed local port)."""
    from huggingface_hub import constants

    from engine import sources

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(sources, "_reachability", {})


def test_the_guard_switches_to_offline_mode_when_the_hub_is_unreachable(unreachable_hub):
    from huggingface_hub import constants

    with hub_guard() as offline:
        assert offline and constants.HF_HUB_OFFLINE
    assert not constants.HF_HUB_OFFLINE


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_a_missing_sae_fails_fast_and_says_how_to_provide_it(hub, request):
    if hub == "unreachable":
        request.getfixturevalue("unreachable_hub")
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=r"no-such-owner/no-such-sae.*hf download"):
        resolve_sae_source("hf:no-such-owner/no-such-sae/layer_3", AllowedDirs.default())
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("hub", ["offline", "unreachable"])
def test_a_missing_open_clip_model_fails_fast_and_says_how_to_provide_it(hub, request):
    if hub == "unreachable":
        request.getfixturevalue("unreachable_hub")
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=r"ViT-B-32 \(openai\).*local-dir"):
        load_workbench(ModelSpec("open_clip", "ViT-B-32", "openai"), SAESpec.toy(), "cpu")
    assert time.monotonic() - start < 10


def test_command_line_choices_keep_their_order_and_the_default_opens_first():
    from app import choices_from_args, parse_args

    args = parse_args(["--model", "open_clip:ViT-B-32@random", "--sae", "/s@blocks.10.resid_post"])
    choices = choices_from_args(args)
    assert list(choices)[-1] == "toy" and next(iter(choices.values())).sae.site == "blocks.10.resid_post"
    args = parse_args(["--preset", "prisma-vit-b32", "--preset", "saev-vit-b16", "--default", "toy"])
    assert list(choices_from_args(args)) == ["toy", "prisma-vit-b32", "saev-vit-b16"]
    with pytest.raises(SystemExit):
        parse_args(["--model", "toy"])  # a model without its SAE


def test_presets_name_their_sources():
    for found in (preset("prisma-vit-b32"), preset("saev-vit-b16")):
        assert found.sources and all(url.startswith("https://") for url in found.sources)
        assert found.sae.path.startswith("hf:") and found.model.family == "open_clip"


def test_the_command_line_reports_a_missing_sae_without_a_traceback(tmp_path):
    from app import main

    with pytest.raises(SystemExit, match=r"^error: SAE not found: .*missing_sae"):
        main(["--model", "open_clip:ViT-B-32@random", "--sae", str(tmp_path / "missing_sae")])
