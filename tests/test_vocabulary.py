"""Naming latents by the concept vocabulary (engine/vocabulary.py), on the toy CLIP (an open_clip CLIP)."""

import torch
import torch.nn.functional as F

from engine import vocabulary

from .conftest import suffix_row_counts


def batched_joint_directions(workbench, latents, alpha_fraction=vocabulary.ALPHA_FRACTION):
    """The reference: the reference image and every latent in one batch through the suffix."""
    ref_TD = vocabulary.reference_acts(workbench).float()
    alpha = alpha_fraction * float(ref_TD.norm(dim=-1).mean())
    d_KD = F.normalize(workbench.sae.W_dec[latents].float(), dim=-1)
    acts_KTD = torch.cat([ref_TD[None], ref_TD[None] + alpha * d_KD[:, None, :]])
    with torch.no_grad():
        emb_KE = F.normalize(workbench.backend.suffix(acts_KTD, workbench.site).float(), dim=-1)
    return F.normalize(emb_KE[1:] - emb_KE[:1], dim=-1)


def test_a_latents_joint_direction_is_computed_alone_once_and_never_depends_on_the_others(workbench):
    vocabulary._JOINT_MEMO.pop(workbench, None)  # nothing named yet
    with suffix_row_counts(workbench) as rows_seen:
        both = vocabulary.joint_directions(workbench, [5, 9])
        assert rows_seen == [1, 1, 1]  # the reference, then each latent, alone
        alone = vocabulary.joint_directions(workbench, [9])
        again = vocabulary.joint_directions(workbench, [9, 5, 5])
        assert rows_seen == [1, 1, 1]  # named before: nothing runs
    assert torch.equal(alone[0], both[1]) and torch.equal(again, both[[1, 0, 0]])
    torch.testing.assert_close(both, batched_joint_directions(workbench, [5, 9]), rtol=1e-4, atol=1e-5)
    assert vocabulary.joint_directions(workbench, []).shape == (0, both.shape[1])
