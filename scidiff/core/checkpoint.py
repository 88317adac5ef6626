"""Two-tier checkpoints: full training state for exact resume, and a slim safetensors file for inference.

Both are written atomically (temporary file in the same folder, then ``os.replace``) so a run killed
mid-write never leaves a truncated checkpoint, and both load without unpickling (``weights_only=True``,
safetensors). A write that fails removes its temporary file (a full disk says so, with the free space); one killed
mid-write leaves it behind, and ``remove_stale_temps`` clears those when the next run starts (both from
``scidiff.commands``, the one atomic writer of the project). A file that is not what it should be (truncated,
another format) is a ValueError naming it and what was expected.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from scidiff.commands import atomic_write, remove_stale_temps

__all__ = ["atomic_write", "remove_stale_temps", "save_training_state", "load_training_state", "read_run_state",
           "save_inference", "load_inference", "load_run", "check_task"]

CONFIG_KEY = "scidiff_config"


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the full training state (tensors, numbers, strings and containers of them only)."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def _unreadable(path: str | Path, reason: str) -> ValueError:
    return ValueError(f"{path}: not a readable training checkpoint (expected a torch.save archive of a scidiff training "
                      f"state; {reason}). It may be truncated: restore it, or delete it to start over")


def load_training_state(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Read a training state with ``weights_only=True``: nothing in the file is executed. A file that is not one
    (truncated, another format, or holding Python objects other than tensors and plain containers) is a ValueError
    naming it. ``mmap`` maps the tensors instead of reading them (cheap when only the step and config are needed)."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes zip archives; others are not loaded
        raise _unreadable(path, "it is not a zip archive")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: refused to load: it holds Python objects other than tensors and plain containers, "
                         f"and checkpoints are never unpickled ({first})") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise _unreadable(path, str(err).split(". ")[0] or type(err).__name__) from None


def read_run_state(path: str | Path) -> tuple[int, dict[str, Any] | None]:
    """(step, run config or None) of a training checkpoint, without reading its tensors."""
    state = load_training_state(path, mmap=True)
    config = state.get("config")
    return int(state.get("step", 0)), json.loads(config) if isinstance(config, str) else config


def save_inference(path: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write weights as safetensors with the JSON config in the header."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={CONFIG_KEY: json.dumps(config)}))


def load_inference(path: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a safetensors inference file: (state_dict, config)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no inference weights at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise ValueError(f"{path}: not a readable safetensors file (expected scidiff weights in safetensors format, "
                         f"e.g. a run's model.safetensors; {err}). It may be truncated or of another format") from None
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
