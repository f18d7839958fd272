"""morphonet.export.to_block_sparse: same outputs, trainable, block structure kept."""

import pytest
import torch
from torch import nn

from morpho_kernels.nn import BlockSparseLinear, MaskedLinear
from morphonet.export import to_block_sparse


def _block_masked_mlp(block=16, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(MaskedLinear(64, 48), nn.ReLU(), MaskedLinear(48, 10))
    with torch.no_grad():
        lay = model[0]
        keep = torch.rand(48 // block, 64 // block) < 0.5
        keep[0, 0] = True
        elem = keep.repeat_interleave(block, 0).repeat_interleave(block, 1)
        lay.mask_logits.copy_(torch.where(elem, torch.randn(48, 64), torch.tensor(float("-inf"))))
        # element-level pruning inside kept blocks too
        lay.mask_logits[5, 3] = float("-inf")
        model[2].mask_logits.normal_()
    return model, keep


def test_export_same_outputs_and_structure():
    model, keep = _block_masked_mlp()
    model[2].prune(0.5)  # second layer: element masks, pruned, padded to blocks
    sparse = to_block_sparse(model, block_size=16)
    assert isinstance(sparse[0], BlockSparseLinear) and isinstance(sparse[2], BlockSparseLinear)
    assert isinstance(model[0], MaskedLinear)  # not in place
    assert torch.equal(sparse[0].layout.block_mask(), keep)
    x = torch.randn(7, 64)
    torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)


def test_export_fine_tunes():
    model, _ = _block_masked_mlp(seed=1)
    model[2].prune(0.5)
    sparse = to_block_sparse(model, block_size=16)
    opt = torch.optim.Adam(sparse.parameters(), lr=1e-2)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(sparse(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]


def test_export_rejects_bad_arguments():
    model, _ = _block_masked_mlp()
    with pytest.raises(ValueError, match="block_size"):
        to_block_sparse(model)
    with pytest.raises(ValueError, match="block_size"):
        to_block_sparse(model, block_size=24)
    with pytest.raises(ValueError, match="no MaskedLinear"):
        to_block_sparse(nn.Sequential(nn.Linear(4, 4)), block_size=16)
