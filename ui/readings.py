"""Plain-language readings of results, and the number formats every table and sentence shares.

Each reading is written from the numbers the engine returned (never from a template that could claim more
than they show), for a reader who is not a specialist: what the model answers, which concept matters and
what removing or adding it actually does. Pure functions (no Gradio), so each sentence is unit-tested.

>>> number(-7.348247528076172), number(0.9047619047619048), number(0.00003), percent(0.99731)
('-7.35', '0.905', '3e-05', '99.7%')
"""

from __future__ import annotations

import functools
import html
import math
import re
from collections.abc import Sequence

import pandas as pd

DIGITS = 3  # significant digits of every number shown


def significant(value: float, digits: int = DIGITS) -> float:
    """``value`` rounded to ``digits`` significant digits (what tables send to clients).

    >>> significant(-7.348247528076172), significant(0.000031234), significant(1234.5)
    (-7.35, 3.12e-05, 1230.0)
    """
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def number(value: float, digits: int = DIGITS) -> str:
    """A number as shown to people: ``digits`` significant digits, scientific notation only for tiny values,
    no "-0".

    >>> number(0.0666667), number(-0.2), number(6.0), number(12345.6), number(-1e-9), number(-0.0)
    ('0.0667', '-0.2', '6', '12346', '-1e-09', '0')
    """
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 10**digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def percent(probability: float) -> str:
    """A probability as a percentage with 3 significant digits (tiny ones in scientific notation).

    >>> percent(1.0), percent(0.5), percent(0.0000004)
    ('100%', '50%', '4e-05%')
    """
    return f"{number(100 * probability)}%"


class ShownTable(dict):
    """A table as Gradio's Dataframe takes it (``headers``, ``data``, and ``metadata.display_value``: the strings
    the browser shows), with the rounded frame itself as ``.frame`` for Python callers, built when first asked
    for (Gradio never asks: three frames per Attribution request cost 2 ms). Built directly: a pandas ``Styler``
    costs 3 to 4 ms a table to format and for Gradio to read back, on every request."""

    def __init__(self, columns: dict[str, list], shown: list[list[str]], rows: list[list]):
        data = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in rows]
        super().__init__(
            headers=[str(c) for c in columns],
            data=data,
            metadata={"display_value": shown, "styling": [[""] * len(columns) for _ in shown]},
        )
        self.columns = columns

    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns, columns=list(self.columns))


def display_table(frame: pd.DataFrame) -> ShownTable:
    """The frame with its float columns rounded to 3 significant digits (clients read these numbers) and shown
    with :func:`number` (the browser shows these strings). Worked on as Python lists, column by column: pandas'
    own per-column operations cost a millisecond a table."""
    floats = {c for c, dtype in frame.dtypes.items() if pd.api.types.is_float_dtype(dtype)}
    columns = {
        c: [significant(v) for v in values] if c in floats else values for c, values in frame.to_dict("list").items()
    }
    shown = [
        [number(v) if c in floats else ("" if v is None else str(v)) for v in values] for c, values in columns.items()
    ]
    return ShownTable(
        columns,
        [list(row) for row in zip(*shown, strict=True)],
        [list(row) for row in zip(*columns.values(), strict=True)],
    )


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~>])")


def escaped(text: str) -> str:
    r"""Users' text (labels, names, paths) as data inside Markdown: HTML escaped and every Markdown character
    backslash-escaped, so it shows as typed and never becomes a link, emphasis or code.

    >>> print(escaped("<a href=x>dog</a> *b* `c`"))
    &lt;a href=x&gt;dog&lt;/a&gt; \*b\* \`c\`
    """
    return MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(str(text)))


def quoted(text: str) -> str:
    return f"“{text}”"


def named(latent: int, name: str | None) -> str:
    """A latent with its name, when it has one.

    >>> named(51, "shape=circle"), named(3, "")
    ('latent 51 (shape=circle)', 'latent 3')
    """
    return f"latent {latent} ({name})" if name else f"latent {latent}"


def strongest(latents: Sequence[int], actual_drops: Sequence[float]) -> int | None:
    """Index of the latent whose removal actually lowers the metric most, or None when no removal lowers it.

    >>> strongest([4, 9, 2], [0.5, 2.0, -1.0]), strongest([4], [-0.1])
    (1, None)
    """
    if not latents:
        return None
    best = max(range(len(latents)), key=lambda k: actual_drops[k])
    return best if actual_drops[best] > 0 else None


def attribution_reading(
    labels: Sequence[str],
    probabilities: Sequence[float],
    target: int,
    metric: str,
    metric_value: float,
    latent: int | None,
    latent_name: str | None,
    drop: float | None,
    answer_after: int | None,
    probabilities_after: Sequence[float] | None,
    spearman: float,
    n_latents: int,
) -> str:
    """The attribution in words: the answer, the concept whose removal hurts it most (a real ablation, not the
    estimate), what happens then, and how far the estimated ranking can be trusted.

    >>> print(attribution_reading(["circle", "square"], [0.997, 0.003], 0, "logit_difference", 6.1, 51,
    ...       "shape=circle", 6.2, 1, [0.48, 0.52], 0.9, 5))
    The model says **circle** (99.7%). The concept that supports it most is latent 51 (shape=circle): removing it \
lowers the margin of circle over the best other label from 6.1 to -0.1, and the answer becomes **square** (52%). \
The estimated importances agree well with the actual removals (rank agreement 0.9 of 1).
    """
    predicted = max(range(len(labels)), key=lambda i: probabilities[i])
    text = f"The model says **{labels[predicted]}** ({percent(probabilities[predicted])})."
    subject = "it"
    if target != predicted:
        text += f" You asked about **{labels[target]}** ({percent(probabilities[target])})."
        subject = labels[target]
    if latent is None or drop is None:
        return text + (
            f" None of the top {n_latents} concepts supports {subject} on its own: removing any one of them does not "
            "lower the score."
        )
    what = (
        f"the margin of {labels[target]} over the best other label"
        if metric == "logit_difference"
        else f"the probability of {labels[target]}"
    )
    shown = number if metric == "logit_difference" else percent
    text += (
        f" The concept that supports {subject} most is {named(latent, latent_name)}: removing it lowers {what} from "
        f"{shown(metric_value)} to {shown(metric_value - drop)}"
    )
    if answer_after is not None and probabilities_after is not None:
        if answer_after == predicted:
            text += f", and the answer stays **{labels[predicted]}** ({percent(probabilities_after[predicted])})."
        else:
            text += (
                f", and the answer becomes **{labels[answer_after]}** ({percent(probabilities_after[answer_after])})."
            )
    else:
        text += "."
    if math.isfinite(spearman):
        quality = "well" if spearman >= 0.7 else "only partly" if spearman >= 0.3 else "poorly"
        text += (
            f" The estimated importances agree {quality} with the actual removals (rank agreement "
            f"{number(spearman)} of 1)."
        )
        if spearman < 0.3:
            text += " Trust the actual drop column more than the attribution column."
    return text


def edit_phrase(latents: Sequence[int], strengths: Sequence[float], mode: str, names: dict[int, str]) -> str:
    """What an edit does, in words.

    >>> edit_phrase([51], [0.0], "scale", {51: "shape=circle"})
    'removing latent 51 (shape=circle)'
    >>> edit_phrase([3, 7], [2.0, 4.0], "add", {})
    'adding latent 3 at 2x and latent 7 at 4x its typical strength'
    """
    parts = []
    for latent, strength in zip(latents, strengths, strict=True):
        who = named(latent, names.get(latent))
        if mode == "add":
            parts.append(f"{who} at {number(strength)}x")
        elif strength == 0:
            parts.append(f"removing {who}")
        elif strength < 0:
            parts.append(f"inverting {who} ({number(strength)}x)")
        else:
            parts.append(f"scaling {who} by {number(strength)}")
    if mode == "add":
        return "adding " + " and ".join(parts) + " its typical strength"
    return " and ".join(parts)


def steer_reading(labels: Sequence[str], before: Sequence[float], after: Sequence[float], edit: str) -> str:
    """The before/after comparison in words.

    >>> steer_reading(["circle", "square"], [0.9, 0.1], [0.3, 0.7], "removing latent 5")
    'Before the edit the model says **circle** (90%). After removing latent 5 it says **square** (70%); circle \
falls from 90% to 30%.'
    >>> steer_reading(["circle", "square"], [0.9, 0.1], [0.9, 0.1], "scaling latent 5 by 1")
    'Before the edit the model says **circle** (90%). After scaling latent 5 by 1 the answer stays **circle** \
(90%): the edit does not change it.'
    """
    b = max(range(len(labels)), key=lambda i: before[i])
    a = max(range(len(labels)), key=lambda i: after[i])
    text = f"Before the edit the model says **{labels[b]}** ({percent(before[b])}). After {edit}"
    if a != b:
        return text + (
            f" it says **{labels[a]}** ({percent(after[a])}); {labels[b]} falls from {percent(before[b])} to "
            f"{percent(after[b])}."
        )
    if percent(before[b]) == percent(after[b]):
        return text + f" the answer stays **{labels[b]}** ({percent(after[b])}): the edit does not change it."
    direction = "rises" if after[b] > before[b] else "falls"
    return text + f" the answer stays **{labels[b]}**; its probability {direction} to {percent(after[b])}."


def sweep_reading(strengths: Sequence[float], predicted: Sequence[str], unedited: str, reference: float) -> str:
    """Where the answer changes, reading the sweep outward from the unedited strength (1 in scale mode, 0 in
    add mode): in each direction, the last strength that keeps the unedited answer and the first that does not.

    >>> print(sweep_reading([-1, -0.2, 0.0667, 1, 2], ["square", "square", "circle", "circle", "circle"], "circle", 1))
    Unedited (strength 1) the model says **circle**. Going down from 1, the answer stays circle down to 0.0667 \
and becomes **square** at -0.2. Going up from 1, it stays circle up to 2 (the end of the sweep).
    """
    text = f"Unedited (strength {number(reference)}) the model says **{unedited}**."
    for word, side in (
        ("down", sorted(((s, p) for s, p in zip(strengths, predicted) if s < reference), reverse=True)),
        ("up", sorted((s, p) for s, p in zip(strengths, predicted) if s > reference)),
    ):
        if not side:
            continue
        last_same = None
        for strength, answer in side:
            if answer != unedited:
                if last_same is None:
                    text += (
                        f" Going {word} from {number(reference)}, the answer is already **{answer}** at the first "
                        f"strength sampled, {number(strength)}."
                    )
                else:
                    text += (
                        f" Going {word} from {number(reference)}, the answer stays {unedited} {word} to "
                        f"{number(last_same)} and becomes **{answer}** at {number(strength)}."
                    )
                break
            last_same = strength
        else:
            text += f" Going {word} from {number(reference)}, it stays {unedited} {word} to {number(last_same)} (the end of the sweep)."
    return text


def heatmap_caption(latent: int, name: str | None, patch_max: float, class_token: float | None) -> str:
    """The heatmap in words, including the two cases where it is blank.

    >>> heatmap_caption(7, "red", 0.0, 1.5)
    'latent 7 (red) fires only on the class token (1.5), the summary token the answer is read from, not on any \
patch: the map is blank.'
    """
    who = named(latent, name)
    if patch_max > 0:
        text = f"{who}: strongest on a patch {number(patch_max)} (the darkest red)"
        return text + (f", class token {number(class_token)}." if class_token is not None else ".")
    if class_token:
        return (
            f"{who} fires only on the class token ({number(class_token)}), the summary token the answer is read "
            "from, not on any patch: the map is blank."
        )
    return f"{who} does not fire anywhere on this image: the map is blank."
