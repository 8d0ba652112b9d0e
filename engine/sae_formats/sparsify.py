"""sparsify: EleutherAI's TopK SAEs and transcoders (github.com/EleutherAI/sparsify; GitHub only: the PyPI
package named ``sparsify`` is an unrelated Neural Magic tool).

On disk: the trainer saves each coder in a directory named after its hookpoint, holding ``cfg.json`` and
``sae.safetensors`` with ``encoder.weight [d_sae, d_in]`` (an ``nn.Linear``, so transposed from our layout),
``encoder.bias [d_sae]``, ``W_dec [d_sae, d_in]`` and ``b_dec [d_in]``. ``cfg.json`` states ``d_in`` and
``num_latents`` (0 means ``d_in * expansion_factor``), checked against the tensors, and ``k``.

The SAE is TopK on ReLU'd pre-activations, which gives the same numbers as ReLU of the top k, our ``topk``.
``b_dec`` is subtracted before encoding. The site is the directory name, a module path such as
``vision_model.encoder.layers.9``, whose output is the residual stream after block 9.

Pitfalls: coders that are not plain SAEs (``transcode``, ``skip_connection``, ``embed_skip``,
``gram_lookup``) or use another activation are refused; a directory renamed after training loses its site.

>>> from pathlib import Path
>>> parts = read(Found(Path("tests/fixtures/sae/sparsify/vision_model.encoder.layers.2")), Hints())
>>> parts.architecture, parts.k, parts.site, parts.declared
('topk', 4, 'blocks.2.resid_post', DeclaredSizes(where='cfg.json', d_in=16, d_sae=64))
"""

from __future__ import annotations

from safetensors.torch import load_file

from engine.sae_formats._common import (
    Found,
    Hints,
    Parts,
    SAEFormat,
    declared_sizes,
    read_json,
    refuse,
    site_from_hook,
    tensor,
)

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae.safetensors"
NAME = "sparsify"
EXPECTS = f"a <hookpoint> directory with {CFG_FILE} and {WEIGHTS_FILE}"
NOT_PLAIN_SAE = ("transcode", "skip_connection", "embed_skip", "gram_lookup")


def recognise(found: Found) -> bool:
    return {CFG_FILE, WEIGHTS_FILE} <= found.names


def read(found: Found, hints: Hints) -> Parts:
    directory = found.path
    cfg, tensors = read_json(directory / CFG_FILE), load_file(str(directory / WEIGHTS_FILE))
    for flag in NOT_PLAIN_SAE:
        if cfg.get(flag):
            raise refuse(directory, f"a sparsify coder with {flag}=true")
    if cfg.get("activation", "topk") != "topk":
        raise refuse(directory, f"sparsify activation {cfg.get('activation')!r}", "topk is read")
    parts = Parts(
        W_enc_DS=tensor(tensors, "encoder.weight", directory).T.contiguous(),  # nn.Linear: [d_sae, d_in]
        b_enc_S=tensor(tensors, "encoder.bias", directory),
        W_dec_SD=tensor(tensors, "W_dec", directory),
        b_dec_D=tensor(tensors, "b_dec", directory),
        architecture="topk",  # top-k of relu(pre): the same numbers as relu of the top-k of pre
        k=cfg.get("k"),
        declared=declared_sizes(CFG_FILE, cfg.get("d_in"), cfg.get("num_latents"), cfg.get("expansion_factor")),
    )
    # the trainer saves each coder under its hookpoint, a module path such as vision_model.encoder.layers.9
    return site_from_hook(parts, directory.name, NAME)


FORMAT = SAEFormat(name=NAME, expects=EXPECTS, reads="directory", recognise=recognise, read=read)
