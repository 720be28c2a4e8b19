"""The cache job's top-K selection keeps what a stable descending sort keeps (ties at the
boundary to the lowest ids), in column order, with and without ties."""

import pytest
import torch

from megatron_kd.distill.cache import _top_k_lowest_id


@pytest.mark.parametrize("ties", [False, True])
def test_top_k_is_a_stable_sorts_selection(ties):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 6, (64, 40), generator=g).float() if ties else torch.randn(64, 40, generator=g)
    for k in (1, 7, 40):
        values, cols = _top_k_lowest_id(x, k)
        want = torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :k].sort(-1).values
        assert torch.equal(cols, want), k
        assert torch.equal(values, x.gather(1, want))
