"""ConditionalUnet1D (Chi et al. 2023): shapes, horizon errors, conditioning, compile-friendliness."""

import pytest
import torch

from scidiff.policy import ConditionalUnet1D

SMALL = dict(down_dims=[16, 32, 64], step_embed_dim=16)


def test_output_shape_matches_input():
    net = ConditionalUnet1D(action_dim=2, horizon=16, global_cond_dim=40, **SMALL)
    x = torch.randn(3, 16, 2)
    y = net(x, torch.tensor([0.0, 50.0, 99.0]), global_cond=torch.randn(3, 40))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_scalar_time_broadcasts_over_batch():
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=3, horizon=8, **SMALL).eval()
    x = torch.randn(2, 8, 3)
    torch.testing.assert_close(net(x, torch.tensor(7.0)), net(x, torch.full((2,), 7.0)))


@pytest.mark.parametrize("horizon, levels, factor", [(10, 3, 4), (6, 3, 4), (12, 4, 8)])
def test_horizon_error_at_construction(horizon, levels, factor):
    dims = [16 * 2**i for i in range(levels)]
    with pytest.raises(ValueError, match=rf"horizon {horizon} does not fit {levels} levels: it must be divisible by {factor}"):
        ConditionalUnet1D(action_dim=2, horizon=horizon, down_dims=dims)


def test_forward_rejects_other_lengths_and_bad_cond():
    net = ConditionalUnet1D(action_dim=2, horizon=8, global_cond_dim=4, **SMALL)
    with pytest.raises(ValueError, match="horizon=8"):
        net(torch.randn(1, 12, 2), torch.zeros(1), global_cond=torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"global_cond must have shape \(1, 4\)"):
        net(torch.randn(1, 8, 2), torch.zeros(1), global_cond=torch.zeros(1, 5))
    with pytest.raises(ValueError, match="n_groups=8"):
        ConditionalUnet1D(action_dim=2, horizon=8, down_dims=[12, 24])


def test_conditioning_and_time_change_the_output():
    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, horizon=8, global_cond_dim=4, **SMALL)
    x, c = torch.randn(2, 8, 2), torch.randn(2, 4)
    base = net(x, torch.zeros(2), global_cond=c)
    assert not torch.allclose(base, net(x, torch.full((2,), 50.0), global_cond=c))
    assert not torch.allclose(base, net(x, torch.zeros(2), global_cond=c + 1))


def test_paper_size_is_about_66M_parameters():
    # Chi et al. 2023: down_dims [256, 512, 1024], kernel 5, step embedding 256, PushT keypoints obs 20-d x To=2.
    with torch.device("meta"):
        net = ConditionalUnet1D(action_dim=2, horizon=16, global_cond_dim=40)
    n = sum(p.numel() for p in net.parameters())
    assert 65e6 < n < 67e6


def test_traces_as_one_graph():
    net = ConditionalUnet1D(action_dim=2, horizon=8, global_cond_dim=4, **SMALL)
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    x, t, c = torch.randn(2, 8, 2), torch.rand(2) * 100, torch.randn(2, 4)
    torch.testing.assert_close(compiled(x, t, global_cond=c), net(x, t, global_cond=c))
