"""The shared denoising loss on dense and graph batches."""

import pytest
import torch

from scidiff.core import EDM, Flow, VPDiscrete, alphas_cumprod_from_betas, cosine_betas, diffusion_loss, prediction_target
from scidiff.core.checkpoint import atomic_write


def test_graph_batch_gets_one_time_per_graph_and_projected_noise():
    process = VPDiscrete(alphas_cumprod_from_betas(cosine_betas(1000)))
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    x0 = torch.randn(9, 3)
    seen = {}

    def remove_mean(x):
        sums = torch.zeros(3, 3).index_add_(0, batch, x)
        return x - (sums / torch.bincount(batch)[:, None])[batch]

    def net(x_t, t):
        seen["t"], seen["x_t"] = t, x_t
        return torch.zeros_like(x_t)

    loss = diffusion_loss(net, x0, process, "epsilon", generator=torch.Generator().manual_seed(0), batch=batch,
                          num_graphs=3, project=remove_mean)
    t = seen["t"]
    for g in range(3):
        assert (t[batch == g] == t[batch == g][0]).all()
    # With a zero prediction the loss is the mean squared (projected) noise; recover eps from x_t.
    tt = t.double()
    alpha, sigma = process.alpha(tt)[:, None], process.sigma(tt)[:, None]
    eps = (seen["x_t"].double() - alpha * x0.double()) / sigma
    assert torch.allclose(remove_mean(eps.float()), eps.float(), atol=1e-4)
    assert loss.item() == pytest.approx((eps**2).mean().item(), rel=1e-4)


def test_loss_mask_excludes_entries():
    process = Flow()
    x0 = torch.randn(8, 4)

    def net(x_t, t):
        return torch.full_like(x_t, 1e3)  # a huge error everywhere

    mask = torch.zeros(8, 4, dtype=torch.bool)
    mask[:, :2] = True
    g = torch.Generator().manual_seed(0)
    masked = diffusion_loss(net, x0, process, "velocity", generator=g, loss_mask=mask)
    g = torch.Generator().manual_seed(0)
    full = diffusion_loss(net, x0, process, "velocity", generator=g)
    assert masked.item() == pytest.approx(full.item(), rel=0.05)  # same per-entry scale
    assert diffusion_loss(net, x0, process, "velocity", generator=g, loss_mask=torch.zeros(8, 4, dtype=torch.bool)) == 0


def test_perfect_prediction_has_zero_loss():
    """A network that outputs the exact target (it sees x_t, so build it from the known x0) gives zero loss."""
    process = EDM()
    x0 = torch.randn(16, 2, dtype=torch.float64)

    def oracle(x_in, network_time):
        sigma = torch.exp(network_time.double() / 250.0)[:, None]
        x_t = x_in * (sigma**2 + 0.25).sqrt()  # undo c_in
        eps = (x_t - x0) / sigma
        return prediction_target(x0, eps, sigma[:, 0], process, "edm")

    loss = diffusion_loss(oracle, x0, process, "edm", generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-8


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_text("old")

    def failing(tmp):
        open(tmp, "w").write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
