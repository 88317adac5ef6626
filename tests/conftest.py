"""Test-wide settings: one torch thread, so timings and float reductions do not depend on the machine's load."""

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    previous, variable = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # what the CLIs run in-process read for their thread count (--threads)
    yield
    torch.set_num_threads(previous)
    if variable is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = variable
