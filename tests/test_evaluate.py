"""engine.evaluate's per-pair figures against direct computations, and its command line on another toy CLIP."""

import numpy as np

from engine import evaluate
from engine.toyworld import captions, render
from engine.toyworld.render import FACTORS


def test_removing_every_active_latent_leaves_the_error_term_and_the_decoder_bias(workbench):
    """A pair's ``all_removed_flips`` is the answer of the suffix on ``b_dec + error`` alone, computed here
    without the edit machinery, against the clean answer."""
    labels_S = ["inactive"] * workbench.d_sae
    rng = np.random.default_rng(0)
    moved = []
    for scene, seed in render.sample_scenes(3, 123):
        (state,) = workbench.site_states([render.render(scene, seed)[0]])
        for factor in FACTORS:
            pair = evaluate.evaluate_pair(workbench, state, scene, factor, labels_S, rng)
            text_emb_LE = workbench.text_embeddings(captions.factor_prompts(scene, factor), "{}")
            clean = workbench.logits_from_acts(state.acts_TD[None], text_emb_LE)[0].argmax()
            left_TD = state.error_TD + workbench.sae.b_dec
            emptied = workbench.logits_from_acts(left_TD[None], text_emb_LE)[0].argmax()
            assert pair["all_removed_flips"] == bool(emptied != clean)
            moved.append(pair["all_removed_flips"])
    assert any(moved) and not all(moved)  # both outcomes occur: the check compares something


def test_model_names_another_toy_clip_directory_and_defaults_to_the_shipped_one(monkeypatch):
    seen = {}

    def fake_evaluate(workbench, n_scenes, allowed):
        seen["model"] = workbench.model_spec
        return {}

    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(evaluate, "load_workbench", lambda model, *a, **k: type("W", (), {"model_spec": model})())
    monkeypatch.setattr(evaluate, "print_result", lambda *a, **k: None)
    evaluate.main(["--scenes", "2", "--device", "cpu"])
    assert seen["model"] == evaluate.ModelSpec.toy()
    evaluate.main(["--scenes", "2", "--device", "cpu", "--model", "/somewhere/toy_clip"])
    assert seen["model"].name == "local-dir:/somewhere/toy_clip"
