"""Slow, obviously-correct references, written without the engine's edit code (engine.edits).

A steered forward pass the long way: the model's own full forward, with a hook at the site that encodes the
activation with the SAE, writes the edited code f' latent by latent, and returns the SAE's own decode of f'
plus the error term of the unedited code. The engine's fast path (cached prefix, decoder-row arithmetic, one
batched suffix) must agree with it.
"""

from __future__ import annotations

import torch

from engine import zeroshot


def edited_code(f_TS: torch.Tensor, latents, strengths, mode: str, token_ids, typical_S: torch.Tensor | None):
    """f' for one image: scale f_i by s_i, or add a_i * typical_i, at the given token indices only."""
    edited_TS = f_TS.clone()
    for latent, strength in zip(latents, strengths, strict=True):
        for t in token_ids:
            if mode == "scale":
                edited_TS[t, latent] = f_TS[t, latent] * strength
            else:
                edited_TS[t, latent] = f_TS[t, latent] + strength * typical_S[latent]
    return edited_TS


def hooked_steered_logits(workbench, image, latents, strengths, labels, mode="scale", patches=None, typical_S=None):
    """Zero-shot logits (L,) of one full forward pass with the edit made by the SAE's own encode and decode."""
    sae, backend = workbench.sae, workbench.backend
    text_LE = workbench.text_embeddings(labels)

    def hook(module, inputs, output):
        x_TD = output[0]
        f_TS = sae.encode(x_TD)
        n_tokens = x_TD.shape[0]
        if patches is None:
            token_ids = range(n_tokens)
        else:
            token_ids = [backend.n_prefix_tokens + p for p in patches]
        f_edit_TS = edited_code(f_TS, latents, strengths, mode, token_ids, typical_S)
        error_TD = x_TD - sae.decode(f_TS, x_TD)
        return (sae.decode(f_edit_TS, x_TD) + error_TD).unsqueeze(0)

    with torch.no_grad(), workbench.model.hooked([(backend.site_module(workbench.site), hook)]):
        emb_1E = backend.encode_image(workbench.pixels([image]))
    return zeroshot.zero_shot_logits(emb_1E.float(), text_LE, backend.logit_scale)[0]
