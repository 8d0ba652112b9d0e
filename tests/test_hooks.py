import pytest
import torch

from engine.hooks import attached


def test_hooks_are_removed_even_when_the_forward_raises():
    layer = torch.nn.Linear(3, 3)

    def boom(module, inputs, output):
        raise RuntimeError("inside the hook")

    with pytest.raises(RuntimeError, match="inside the hook"), attached([(layer, boom)]):
        layer(torch.ones(1, 3))
    assert len(layer._forward_hooks) == 0
    layer(torch.ones(1, 3))  # no hook left behind
