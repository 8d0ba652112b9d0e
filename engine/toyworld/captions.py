"""Caption grammar of the toy world.

A caption mentions any non-empty subset of the factors, always in one order:

    caption  := "a" [size] [colour] (shape | "shape") [" in the " position] [" on a " texture " background"]
                [" with a corner marker" | " with no corner marker"]

so "a circle", "a red shape", "a shape on a striped background" and the full
"a small red circle in the top left on a plain background with no corner marker" are all captions.
Training on partial captions is what lets a user ask about one factor at a time ("a {}" with labels
"circle", "red shape", ...). A caption is *consistent* with a scene when every factor it mentions has the
scene's value; the contrastive loss treats every consistent caption as a positive.

>>> from engine.toyworld.render import Scene
>>> caption(Scene("circle", "red", "plain", "large", "top left", "absent").as_dict())
'a large red circle in the top left on a plain background with no corner marker'
>>> caption({"colour": "blue"})
'a blue shape'
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from engine.toyworld.render import FACTORS, Scene


def caption(mentioned: Mapping[str, str]) -> str:
    """The caption that mentions exactly the factors in ``mentioned`` (factor -> value)."""
    unknown = set(mentioned) - set(FACTORS)
    if unknown or not mentioned:
        raise ValueError(f"mention at least one of {', '.join(FACTORS)}; got {sorted(mentioned)}")
    words = ["a"]
    words += [mentioned[f] for f in ("size", "colour") if f in mentioned]
    words.append(mentioned.get("shape", "shape"))
    if "position" in mentioned:
        words.append(f"in the {mentioned['position']}")
    if "texture" in mentioned:
        words.append(f"on a {mentioned['texture']} background")
    if "marker" in mentioned:
        words.append("with a corner marker" if mentioned["marker"] == "present" else "with no corner marker")
    return " ".join(words)


def factor_prompts(scene: Scene, factor: str) -> list[str]:
    """Full captions of ``scene`` with ``factor`` run over all its values (the evaluation's prompts)."""
    return [caption(scene.replace(**{factor: value}).as_dict()) for value in FACTORS[factor]]


def random_mention(scene: Scene, rng: np.random.Generator, p_full: float = 0.3) -> dict[str, str]:
    """A random subset of the scene's factors: the full caption with probability ``p_full``."""
    truth = scene.as_dict()
    if rng.random() < p_full:
        return truth
    keep = rng.random(len(FACTORS)) < 0.45
    if not keep.any():
        keep[rng.integers(len(FACTORS))] = True
    return {f: v for f, v, k in zip(truth, truth.values(), keep) if k}


def one_factor_changed(scene: Scene, rng: np.random.Generator) -> dict[str, str]:
    """A full caption of ``scene`` with one factor set to another value: a hard negative."""
    factor = str(rng.choice(list(FACTORS)))
    others = [v for v in FACTORS[factor] if v != getattr(scene, factor)]
    return scene.replace(**{factor: str(rng.choice(others))}).as_dict()


def consistent(mentioned: Mapping[str, str], scene: Scene) -> bool:
    return all(getattr(scene, f) == v for f, v in mentioned.items())


def label_factor(labels: list[str]) -> tuple[str, list[str]] | None:
    """If every label names exactly one value of one common factor ("circle", "red shape"), that factor and
    the value per label; otherwise None."""
    named = []
    for label in labels:
        padded = f" {label.lower()} "
        hits = [(f, v) for f, values in FACTORS.items() for v in values if f" {v} " in padded]
        if len(hits) != 1:
            return None
        named.append(hits[0])
    factors = {f for f, _ in named}
    return (named[0][0], [v for _, v in named]) if len(factors) == 1 else None


def truth_for_labels(labels: list[str], scenes: list[Scene]) -> list[int | None] | None:
    """Index of the true label per scene, where the labels name values of one factor (else None)."""
    found = label_factor(labels)
    if found is None:
        return None
    factor, values = found
    return [values.index(getattr(s, factor)) if getattr(s, factor) in values else None for s in scenes]
