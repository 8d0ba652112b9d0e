"""Recipes: the state of an analysis as a small JSON object (or a URL query string) that reproduces it.

A recipe names the model and SAE (by the menu name and by their specs, so that another server can say which
model it lacks), the image by the hash of its pixels (the image itself is not carried: it may be private; the
importer is told when the current image differs), the labels, template, target, metric and number of top
latents, the edit (latents, strengths, mode, patches), the sweep range and the tab. Everything is validated on
the way in, as any user input is: unknown fields, wrong types and out-of-range values are refused with the valid
choices, and the text is data (the UI escapes it).

>>> recipe = Recipe(model="toy", labels=("circle", "square"), latents=(3,), strengths=(0.0,))
>>> Recipe.from_json(recipe.to_json()) == recipe
True
>>> Recipe.from_query(recipe.to_query()) == recipe
True
>>> Recipe.from_json('{"version": 1, "colour": "red"}')
Traceback (most recent call last):
...
engine.errors.UserInputError: unknown recipe field(s) colour; valid: version, tab, model, model_spec, sae_spec, image_sha1, labels, template, target, metric, top_k, latents, strengths, mode, patches, sweep
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from urllib.parse import parse_qsl, urlencode

from engine.errors import UnknownChoiceError, UserInputError
from engine.resident import check_template
from engine.zeroshot import parse_labels

VERSION = 1
TABS = ("attribution", "steering", "explain", "diff")
METRICS = ("logit_difference", "probability")
MODES = ("scale", "add")
MAX_RECIPE_CHARS = 200_000
LIST_FIELDS = ("labels", "latents", "strengths", "patches", "sweep")


@dataclass(frozen=True)
class Recipe:
    version: int = VERSION
    tab: str = "attribution"
    model: str = ""
    model_spec: str = ""
    sae_spec: str = ""
    image_sha1: str = ""
    labels: tuple[str, ...] = ()
    template: str = ""
    target: str = ""
    metric: str = "logit_difference"
    top_k: int = 10
    latents: tuple[int, ...] = ()
    strengths: tuple[float, ...] = ()
    mode: str = "scale"
    patches: tuple[int, ...] = ()
    sweep: tuple[float, ...] = (-1.0, 3.0, 16.0)

    def __post_init__(self):
        check(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1, allow_nan=False)

    def to_query(self) -> str:
        """The recipe as a URL query string: lists comma-joined (a label holding a comma is refused by
        ``parse_labels`` anyway), empty fields left out."""
        items = []
        for name, value in asdict(self).items():
            if name in LIST_FIELDS:
                value = ",".join(str(v) for v in value)
            if value not in ("", None):
                items.append((name, str(value)))
        return urlencode(items)

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        if not isinstance(values, dict):
            raise UserInputError("a recipe is a JSON object with named fields")
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in valid]
        if unknown:
            raise UserInputError(f"unknown recipe field(s) {', '.join(map(str, unknown))}; valid: {', '.join(valid)}")
        converted = {}
        for f in fields(cls):
            if f.name in values:
                converted[f.name] = convert(f.name, values[f.name])
        return cls(**converted)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        if len(text) > MAX_RECIPE_CHARS:
            raise UserInputError(f"a recipe has at most {MAX_RECIPE_CHARS} characters; got {len(text)}")
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserInputError(f"the recipe is not valid JSON ({error.msg} at line {error.lineno})") from None
        return cls.from_dict(values)

    @classmethod
    def from_query(cls, query: str) -> Recipe:
        if len(query) > MAX_RECIPE_CHARS:
            raise UserInputError(f"a recipe has at most {MAX_RECIPE_CHARS} characters; got {len(query)}")
        values: dict = {}
        for name, value in parse_qsl(query.lstrip("?"), keep_blank_values=True):
            values[name] = [v.strip() for v in value.split(",") if v.strip()] if name in LIST_FIELDS else value
        return cls.from_dict(values)

    @classmethod
    def parse(cls, text: str) -> Recipe:
        """A recipe from JSON, a query string, or a whole URL that carries one."""
        text = str(text or "").strip()
        if not text:
            raise UserInputError("paste a recipe: the JSON the app exported, or its link")
        if text.startswith("{"):
            return cls.from_json(text)
        return cls.from_query(text.split("?", 1)[1] if "?" in text else text)


def convert(name: str, value):
    """One field's value as its type, with a message that names the field."""
    try:
        if name in ("version", "top_k"):
            number = float(value)
            if not math.isfinite(number) or number != int(number):
                raise ValueError
            return int(number)
        if name in ("latents", "patches"):
            return tuple(int(convert("top_k", v)) for v in as_list(value))
        if name in ("strengths", "sweep"):
            numbers = tuple(float(v) for v in as_list(value))
            if not all(math.isfinite(v) for v in numbers):
                raise ValueError
            return numbers
        if name == "labels":
            return tuple(str(v) for v in as_list(value))
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise UserInputError(f"recipe field {name!r} has a value of the wrong kind: {str(value)[:80]!r}") from None


def as_list(value) -> list:
    if isinstance(value, str):
        return [v for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        raise TypeError
    return list(value)


def check(recipe: Recipe) -> None:
    if recipe.version != VERSION:
        raise UserInputError(f"recipe version {recipe.version} is not supported; this app reads version {VERSION}")
    if recipe.tab not in TABS:
        raise UnknownChoiceError("tab", recipe.tab, TABS)
    if recipe.metric not in METRICS:
        raise UnknownChoiceError("metric", recipe.metric, METRICS)
    if recipe.mode not in MODES:
        raise UnknownChoiceError("mode", recipe.mode, MODES)
    if recipe.labels:
        parse_labels(list(recipe.labels))
    if recipe.template:
        check_template(recipe.template)
    if not 1 <= recipe.top_k <= 50:
        raise UserInputError(f"recipe field 'top_k' must be within 1 .. 50; got {recipe.top_k}")
    if any(i < 0 for i in (*recipe.latents, *recipe.patches)):
        raise UserInputError("recipe latent ids and patch indices are whole numbers from 0")
    if recipe.strengths and len(recipe.strengths) not in (1, len(recipe.latents)):
        raise UserInputError(
            f"a recipe gives one strength, or one per latent; got {len(recipe.strengths)} for {len(recipe.latents)}"
        )
    if len(recipe.sweep) != 3:
        raise UserInputError("recipe field 'sweep' is [lowest, highest, number of strengths]")
    if len(recipe.image_sha1) not in (0, 40) or any(c not in "0123456789abcdef" for c in recipe.image_sha1):
        raise UserInputError("recipe field 'image_sha1' is 40 hexadecimal digits (or empty)")
    for name in ("model", "model_spec", "sae_spec", "target"):
        if len(getattr(recipe, name)) > 500:
            raise UserInputError(f"recipe field {name!r} is too long (at most 500 characters)")
