"""Input checks shared by the environments: bad actions or states raise ValueError before they touch the physics."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_finite_vector"]


def as_finite_vector(value: Any, size: int, name: str) -> np.ndarray:
    """A float64 copy of `value` as a vector of `size` finite numbers, or a ValueError that says what is wrong."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be {size} numbers, got {value!r} ({error})") from None
    if array.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {array.tolist()}")
    return array.copy()
