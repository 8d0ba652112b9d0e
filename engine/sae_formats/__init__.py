"""Read the SAE files that public libraries write, and turn each into our one ``SAE``.

Every public SAE is, at inference, the same small function (see ``engine/sae.py``): an optional per-input
normalisation, ``pre = (x - b_dec?) @ W_enc + b_enc``, a sparsifying activation (ReLU, TopK, JumpReLU) and
``x_hat = f @ W_dec + b_dec``. The libraries differ in how they store it: which tensors, in which layout
(``nn.Linear`` keeps ``[out, in]``, so its weights arrive transposed), whether ``b_dec`` is subtracted before
encoding, where k or the thresholds live, and how they name the site. ``load_sae`` reads each layout, folds
any reparametrisation into plain weights, and returns an ``SAE`` whose ``encode`` / ``decode`` give the same
numbers as the original library (``tests/test_sae_formats.py`` checks this against files and outputs written
by the libraries themselves, see ``scripts/make_sae_fixtures.py``).

One module per format says what the format is, who publishes it, its layout on disk and its pitfalls, and
declares an ``SAEFormat``: its name, what it ``expects`` on disk (for messages), whether it ``reads`` a
directory or one weights file, how to ``recognise`` one and how to ``read`` it into ``Parts``. ``_common``
holds what they share: safe loading, ``Found`` (what recognisers look at, each read once), ``Parts``, sites,
refusals and ``build_sae``, which checks the sizes the file declares against its tensors (a ``cfg.json``
saying d_in=8 over tensors of width 4 is an error, not a guess) and makes the frozen SAE.

How a path is recognised: the first format in ``REGISTRY`` whose ``recognise`` says yes wins. A directory is
shown to the directory formats; if none claims it, the weights file in it (a name some format declares in
``weights_files``, else its only torch file, passing over ``side_files``) is shown to the file formats. A
``cfg.json``, ``config.json`` or ``.safetensors`` file stands for its directory. The order matters where two
formats could claim the same file (a ``{cfg, state_dict}`` pair is PatchSAE's before ViT-Prisma's; a torch
file named ``ae.pt`` is dictionary_learning's unless a format before it recognised what it holds).

Adding a format: write ``engine/sae_formats/<name>.py`` with a docstring like the others and a
``FORMAT = SAEFormat(...)``, add one line to ``REGISTRY`` below at the place its recognition needs, and add
a fixture written by the library itself to ``scripts/make_sae_fixtures.py`` and ``tests/test_sae_formats.py``.

Sites: ours are ``blocks.{i}.resid_post``, the residual stream after vision block i, 0-based. Hook names that
mean the same are mapped to it (``blocks.i.hook_resid_post``, the output of ``...layers.i``, and
``blocks.i.hook_resid_pre`` = after block i-1); the original name is kept in ``SAEConfig.source_site``. When
the site cannot be told (not recorded, a negative layer index, an MLP or attention site), ``SAEFormatError``
says so, and ``site="blocks.N.resid_post"`` sets it.

Safety: ``.pt`` files are read only with ``torch.load(..., weights_only=True)`` (``torch_load_safely``); the
two config classes that libraries pickle into their files are read back as plain attributes, and anything
else that needs unpickling is refused (see ``_common``).

>>> sae = load_sae("tests/fixtures/sae/saelens/standard")
>>> sae.config.hook_name, sae.config.source_site
('blocks.3.resid_post', 'blocks.3.hook_resid_post')
"""

from __future__ import annotations

from pathlib import Path

from engine.sae import SAE, SAEFormatError
from engine.sae_formats import (
    dictionary_learning,
    overcomplete,
    patchsae,
    saelens,
    saev,
    sparsify,
    vit_prisma,
)
from engine.sae_formats._common import SITE_HELP, Found, Hints, SAEFormat, build_sae, resid_site, torch_load_safely

__all__ = [
    "REGISTRY",
    "SAE_FORMATS",
    "SITE_HELP",
    "SAEFormat",
    "SAEFormatError",
    "detect_format",
    "load_sae",
    "resid_site",
    "torch_load_safely",
]

REGISTRY: tuple[SAEFormat, ...] = (
    saelens.FORMAT,  # directory: cfg.json + sae_weights.safetensors (also our native files)
    sparsify.FORMAT,  # directory: cfg.json + sae.safetensors
    patchsae.FORMAT,  # .pt: {cfg: ViTSAERunnerConfig or a dict with block_layer, state_dict}
    vit_prisma.FORMAT,  # .pt: {cfg: a Prisma config, state_dict}, or W_enc... beside a Prisma config.json
    overcomplete.FORMAT,  # .pt: a state dict with dictionary._weights
    dictionary_learning.FORMAT,  # ae.pt, or a state dict in AutoEncoder's nn.Linear layout
    saev.FORMAT,  # sae.pt that starts with a JSON line (no torch file does); after ae.pt when both are there
)
"""The formats, in the order they are asked to recognise a path: the first that says yes reads it."""

SAE_FORMATS: tuple[str, ...] = tuple(fmt.name for fmt in REGISTRY)
assert len(set(SAE_FORMATS)) == len(SAE_FORMATS), f"two formats share a name: {SAE_FORMATS}"

_STANDS_FOR_ITS_DIRECTORY = ("cfg.json", "config.json")  # as are .safetensors files


def _not_recognised(path: Path, found: str) -> SAEFormatError:
    expected = "; ".join(f"{fmt.name}: {fmt.expects}" for fmt in REGISTRY)
    return SAEFormatError(f"{path}: not an SAE in a known format; {found}. Expected one of: {expected}")


def _first_that_recognises(found: Found) -> SAEFormat | None:
    kind = "directory" if found.path.is_dir() else "file"
    return next((fmt for fmt in REGISTRY if fmt.reads == kind and fmt.recognise(found)), None)


def _weights_file(directory: Found) -> Path:
    """The one weights file in a directory that no directory format claimed."""
    for fmt in REGISTRY:
        for name in fmt.weights_files:
            if name in directory.names:
                return directory.path / name
    side_files = [part for fmt in REGISTRY for part in fmt.side_files]
    torch_files = sorted(
        name
        for name in directory.names
        if name.endswith((".pt", ".pth")) and not any(part in name for part in side_files)
    )
    if len(torch_files) != 1:
        raise _not_recognised(directory.path, directory.describe())
    return directory.path / torch_files[0]


def _identify(path: Path) -> tuple[SAEFormat, Found]:
    """The format of the SAE at ``path`` and what it is to read: the directory, or the weights file."""
    if not path.exists():
        raise SAEFormatError(f"{path}: no such file or directory")
    if path.is_file() and (path.suffix == ".safetensors" or path.name in _STANDS_FOR_ITS_DIRECTORY):
        path = path.parent
    found = Found(path)
    if path.is_dir():
        if (fmt := _first_that_recognises(found)) is not None:
            return fmt, found
        found = Found(_weights_file(found))
    if (fmt := _first_that_recognises(found)) is not None:
        return fmt, found
    raise _not_recognised(found.path, found.describe())


def detect_format(path: str | Path) -> str:
    """The name (one of SAE_FORMATS) of the format the SAE file or directory at ``path`` is in.

    >>> detect_format("tests/fixtures/sae/sparsify/vision_model.encoder.layers.2")
    'sparsify'
    """
    return _identify(Path(path))[0].name


def load_sae(
    path: str | Path,
    *,
    site: str | None = None,
    architecture: str | None = None,
    k: int | None = None,
) -> SAE:
    """Load an SAE in any format of SAE_FORMATS as our ``SAE`` (frozen, eval mode, float32 on the CPU).

    ``site`` sets the site (``blocks.N.resid_post``) where the file does not tell it or tells another.
    ``architecture`` / ``k`` are for formats that do not record them (overcomplete); where a file records
    them, a different value is an error. Our own files (``SAE.save``) load back to an equal ``SAEConfig``.

    >>> sae = load_sae("tests/fixtures/sae/saev/legacy", site="blocks.10.resid_post")
    >>> sae.config.source_format, sae.config.architecture, sae.config.hook_name
    ('saev', 'relu', 'blocks.10.resid_post')
    """
    path = Path(path)
    fmt, found = _identify(path)
    parts = fmt.read(found, Hints(architecture=architecture, k=k))
    if architecture is not None and architecture != parts.architecture:
        raise SAEFormatError(
            f"{path}: the {fmt.name} file is a {parts.architecture} SAE; architecture={architecture!r}"
        )
    if k is not None and parts.k != k:
        raise SAEFormatError(f"{path}: the {fmt.name} file records k={parts.k}; k={k} was passed")
    return build_sae(parts, fmt.name, path, site)
