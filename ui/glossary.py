"""One plain sentence per technical term the app shows: the Glossary accordion and the ``info=`` lines of the
inputs read from here, so a term is explained the same way wherever it appears."""

from __future__ import annotations

GLOSSARY: dict[str, str] = {
    "SAE": (
        "sparse autoencoder: a small network trained to rewrite the model's internal numbers at one layer as a few "
        "active 'concepts' out of thousands"
    ),
    "latent": "one concept unit of the SAE; it has a number (its id) and fires more or less strongly on each patch",
    "patch": "the model cuts the image into a grid of small squares; each square is a patch (numbered row by row from 0)",
    "class token": (
        "an extra summary slot the model adds to the patches; the model's answer is read from it, so a concept can "
        "fire there without firing on any patch"
    ),
    "logit difference": (
        "how far the target's score is ahead of the best other label (positive: the target wins; negative: it loses)"
    ),
    "attribution": "an estimate of how much the answer's score would drop if a concept were removed",
    "Spearman": (
        "rank agreement from -1 to 1: 1 means the estimated importances put the concepts in the same order as "
        "actually removing them does"
    ),
    "explained variance": (
        "how much of the model's internal numbers on this image the SAE can rebuild (1 = all of it); low values "
        "mean the SAE does not know images like this one"
    ),
    "AUROC": (
        "how well a latent tells images with its concept apart from images without it (1 = perfectly, 0.5 = chance)"
    ),
    "label_score": (
        "how sure the name of a latent is: its AUROC on the toy world (where the truth is known), or on real models "
        "the similarity of the latent to the named words (cosine, -1 to 1)"
    ),
    "KL": ("KL divergence: how much the whole list of probabilities moved away from the unedited one (0 = not at all)"),
    "norm-matched": (
        "a random direction of the same size as the concept's: if it moves the answer as much, the concept itself "
        "is not what matters"
    ),
    "strength": "scale mode: the factor a concept is multiplied by (1 = unchanged, 0 = removed); add mode: how much "
    "of the concept is added, in units of its usual strength (0 = unchanged)",
    "ripple effects": "what the same edit does on other images the model has not been shown here",
    "vision-language model": (
        "a model that looks at an image and writes text about it (here it is asked what a concept looks like)"
    ),
    "explanation": (
        "what the vision-language model says when only this concept is pushed into a blank image: a name for the "
        "concept that comes from what it does, not from the images it fires on"
    ),
    "control": (
        "the same question asked without the concept, with a random push of the same size, and with another "
        "concept's push; an explanation is trustworthy when it differs from all of them"
    ),
    "coefficient": "how hard the concept is pushed into the blank image, in units of its usual strength",
}


def explain(term: str) -> str:
    """The one-line explanation of ``term`` (a KeyError names a missing term: every term must be listed)."""
    return GLOSSARY[term]


def markdown() -> str:
    """The glossary as a Markdown list."""
    return "\n".join(f"- **{term}**: {text}." for term, text in GLOSSARY.items())
