"""What every command shares (scidiff.commands): thread defaults, help texts with defaults, the output guard."""

from __future__ import annotations

import pytest

from scidiff import commands
from scidiff.cli import build_parser


def test_threads_follow_omp_num_threads_else_half_the_cores_at_most_the_cap(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert commands.default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(commands.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert commands.default_threads() == 4 and commands.default_threads(cap=1) == 1
    monkeypatch.setattr(commands.os, "sched_getaffinity", lambda pid: {0, 1})
    assert commands.default_threads() == 1  # a 2-core machine: one thread, the other core for everything else
    import torch

    before = torch.get_num_threads()
    try:
        assert commands.set_threads(2) == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _help(*path: str) -> str:
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if a.dest.endswith("command")).choices[name]
    return parser.format_help()


@pytest.mark.parametrize("path, options", [
    (("policy", "rollout"), ["--sampler", "--steps", "--num-envs", "--noise-seed", "--episodes", "--video-episodes"]),
    (("mol", "generate"), ["--sampler", "--steps", "--seed", "--batch-size", "--max-resample", "--unassigned-stereo"]),
    (("mol", "evaluate"), ["--seed", "--batch-size", "--strain-steps"]),
    (("mol", "build"), ["--conformers", "--shard-size", "--seed"]),
    (("envs", "collect"), ["--episodes", "--seed"]),
    (("train",), ["--threads"]),
])
def test_every_help_text_shows_the_defaults(path, options):
    text = " ".join(_help(*path).split())
    for option in options:
        after = text.split(f" {option} ", 1)[1].split(" --", 1)[0]
        assert "default" in after, (option, after)
