"""Two-tier checkpoints: full training state for exact resume, and a slim safetensors file for inference.

Both are written atomically (temporary file in the same folder, then ``os.replace``) so a run killed
mid-write never leaves a truncated checkpoint, and both load without unpickling (``weights_only=True``,
safetensors).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

__all__ = ["atomic_write", "save_training_state", "load_training_state", "save_inference", "load_inference", "load_run",
           "check_task"]

CONFIG_KEY = "scidiff_config"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the full training state (tensors, numbers, strings and containers of them only)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training state with ``weights_only=True``: nothing in the file is executed."""
    return torch.load(path, map_location=map_location, weights_only=True)


def save_inference(path: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write weights as safetensors with the JSON config in the header."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={CONFIG_KEY: json.dumps(config)}))


def load_inference(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors inference file: (state_dict, config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no inference weights at {path}")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        metadata = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if CONFIG_KEY not in metadata:
        raise ValueError(f"{path} has no '{CONFIG_KEY}' metadata: not a scidiff inference file")
    return state, json.loads(metadata[CONFIG_KEY])


def check_task(path: str | Path, config: dict[str, Any], task: str) -> None:
    """Raise a ValueError naming both tasks unless the run config read from ``path`` is of ``task``."""
    found = config.get("task")
    if found != task:
        raise ValueError(f"{path} holds weights of task {found!r}, not {task!r}")


def load_run(path: str | Path, task: str,
             device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a run's inference file like load_inference, refusing one whose config is of another task."""
    state, config = load_inference(path, device)
    check_task(path, config, task)
    return state, config
