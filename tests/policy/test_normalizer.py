"""Min-max normaliser to [-1, 1] (Chi et al. 2023)."""

import numpy as np
import torch

from scidiff.policy import MinMaxNormalizer


def test_maps_limits_to_unit_interval_and_round_trips():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(100, 3, generator=g) * torch.tensor([512.0, 2.0, 10.0]) + torch.tensor([0.0, -1.0, 5.0])
    norm = MinMaxNormalizer(3).fit(data)
    y = norm.normalize(data)
    torch.testing.assert_close(y.min(0).values, -torch.ones(3))
    torch.testing.assert_close(y.max(0).values, torch.ones(3))
    torch.testing.assert_close(norm.unnormalize(y), data, rtol=1e-5, atol=1e-4)


def test_constant_dimension_maps_to_zero_without_dividing_by_zero():
    data = np.stack([np.linspace(0, 4, 5), np.full(5, 7.0)], axis=1)
    norm = MinMaxNormalizer(2).fit(data)
    y = norm.normalize(torch.as_tensor(data, dtype=torch.float32))
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:, 1], torch.zeros(5))
    torch.testing.assert_close(y[:, 0], torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(norm.unnormalize(y), torch.as_tensor(data, dtype=torch.float32))


def test_limits_travel_in_the_state_dict():
    norm = MinMaxNormalizer(2).fit(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
    fresh = MinMaxNormalizer(2)
    fresh.load_state_dict(norm.state_dict())
    assert set(norm.state_dict()) == {"lo", "hi"}
    x = torch.tensor([[1.0, 20.0]])
    torch.testing.assert_close(fresh.normalize(x), torch.tensor([[0.0, 0.0]]))


def test_applies_over_the_last_axis_of_any_batch_shape():
    norm = MinMaxNormalizer(2).fit(torch.tensor([[0.0, 0.0], [4.0, 8.0]]))
    x = torch.full((2, 3, 2), 2.0)
    torch.testing.assert_close(norm.normalize(x), torch.stack([torch.zeros(2, 3), torch.full((2, 3), -0.5)], -1))
