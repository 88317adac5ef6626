"""`scidiff train -m`: Hydra multirun sweeps through a launcher, each job in its own folder under runs/sweeps named by
its overrides, resumable by rerunning the same command; the project's SLURM launcher preset.

The sweeps run as `python -m scidiff.cli` in a fresh folder (Hydra configures logging and its singletons per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from scidiff.core.checkpoint import load_training_state

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# A tiny mixture2d run (about a second of training); the sweep is over the noise process.
TINY = ["experiment=mixture2d", "model.hidden=16", "model.depth=1", "data.num_samples=256", "trainer.batch_size=64",
        "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.warmup_steps=1", "trainer.progress=false",
        "trainer.tensorboard=false"]
SWEEP = [*TINY, "process=vp_cosine,flow"]


def _sweep(cwd: Path, *args: str) -> tuple[int, list[dict], str]:
    """`scidiff train -m ARGS` in ``cwd``: exit status, the JSON line of each job (stdout holds nothing else), stderr."""
    done = subprocess.run([sys.executable, "-m", "scidiff.cli", "train", "-m", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)
    jobs = [json.loads(line) for line in done.stdout.splitlines()]
    return done.returncode, jobs, done.stderr


def _job_folders(cwd: Path) -> list[Path]:
    return sorted(p for p in (cwd / "runs" / "sweeps").iterdir() if p.is_dir() and not p.name.startswith("."))


def _snapshot(folders: list[Path]) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.rglob("*"))
            if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}


def _check_two_jobs(cwd: Path, jobs: list[dict], step: int) -> list[Path]:
    """Each job trained to ``step`` in its own folder, runs/sweeps/<its overrides>, with its own config and weights;
    the two folders' names differ by the swept setting only."""
    folders = _job_folders(cwd)
    assert [f.name for f in folders] == [
        "data.num_samples=256,experiment=mixture2d,model.depth=1,model.hidden=16,process=flow,trainer.batch_size=64,"
        "trainer.warmup_steps=1",
        "data.num_samples=256,experiment=mixture2d,model.depth=1,model.hidden=16,process=vp_cosine,"
        "trainer.batch_size=64,trainer.warmup_steps=1"]
    assert sorted(Path(job["out_dir"]).resolve() for job in jobs) == [f.resolve() for f in folders]
    assert [job["step"] for job in jobs] == [step, step]
    for folder, process in zip(folders, ["flow", "vp"]):
        config = OmegaConf.load(folder / "config.yaml")
        assert config.process.name == process and Path(config.trainer.out_dir).resolve() == folder.resolve()
        assert (folder / "model.safetensors").is_file()
        assert load_training_state(folder / "checkpoints" / "last.pt")["step"] == step
    return folders


def test_submitit_local_sweep_trains_each_job_in_its_own_folder_and_a_rerun_resumes(tmp_path):
    code, jobs, err = _sweep(tmp_path, "hydra/launcher=submitit_local", *SWEEP)
    assert code == 0, err
    folders = _check_two_jobs(tmp_path, jobs, 4)
    # submitit ran each job as its own process: one log folder per job
    assert len([p for p in (tmp_path / "runs" / "sweeps" / ".submitit").iterdir() if p.name != "%j"]) == 2
    before = _snapshot(folders)

    code, jobs, err = _sweep(tmp_path, "hydra/launcher=submitit_local", *SWEEP)  # the same command again
    assert code == 0, err
    assert _check_two_jobs(tmp_path, jobs, 4) == folders
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "sweeps" / ".submitit").rglob("*_log.err"))
    assert logs.count("is already trained to trainer.max_steps=4: nothing to do") == 2, logs  # each job's stderr
    assert _snapshot(folders) == before  # nothing retrained, nothing rewritten


def test_a_sweep_rerun_with_more_steps_continues_each_run_in_its_folder(tmp_path):
    """The basic launcher (jobs one after another in the sweep's process); trainer.max_steps is not part of the
    folder's name, so raising it resumes every job from its checkpoint instead of starting a new run."""
    code, jobs, err = _sweep(tmp_path, *SWEEP)
    assert code == 0, err
    folders = _check_two_jobs(tmp_path, jobs, 4)
    metrics = {f: (f / "metrics.jsonl").read_text() for f in folders}

    code, jobs, err = _sweep(tmp_path, *SWEEP, "trainer.max_steps=6")
    assert code == 0, err
    assert _check_two_jobs(tmp_path, jobs, 6) == folders
    for folder in folders:  # resumed at step 4: the first run's log continues
        text = (folder / "metrics.jsonl").read_text()
        assert text.startswith(metrics[folder]) and json.loads(text.splitlines()[-1])["step"] == 6


def test_a_sweep_with_one_plain_out_dir_or_a_bad_setting_exits_2_naming_it(tmp_path):
    code, jobs, err = _sweep(tmp_path, *SWEEP, f"trainer.out_dir={tmp_path / 'one'}")
    assert code == 2 and not jobs
    assert "would train every job of the sweep over process=vp_cosine,flow in one folder" in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "one").exists()  # refused before launching

    code, jobs, err = _sweep(tmp_path, *SWEEP, "trainer.lr=0")  # every job goes through the single run's checks
    assert code == 2 and not jobs
    assert "scidiff: error: sweep job 0 (" in err and "trainer.lr must be > 0, got 0" in err, err
    assert "Traceback" not in err
    assert not any((f / "config.yaml").exists() for f in _job_folders(tmp_path))  # refused before training

    code, jobs, err = _sweep(tmp_path, *TINY, "process=vp_cosine,nope")
    assert code == 2 and "Could not find 'process/nope'" in err and "Traceback" not in err, err


def test_the_slurm_preset_extends_submitit_slurm_and_takes_overrides():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from scidiff.core.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                                           "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=8"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.nodes, launcher.tasks_per_node) == ("gpu", 2, 8)
    assert launcher.max_num_timeout == 3 and launcher.timeout_min == 240 and launcher.signal_delay_s == 120


@pytest.mark.slow
def test_submitit_tasks_per_node_run_one_job_as_ddp_ranks(tmp_path):
    """hydra.launcher.tasks_per_node=2: submitit starts the job twice and the two tasks train as one gloo DDP run
    (the full training state holds one RNG state per rank)."""
    code, jobs, err = _sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", *TINY)
    assert code == 0, err
    (folder,) = _job_folders(tmp_path)
    state = load_training_state(folder / "checkpoints" / "last.pt")
    assert state["step"] == 4 and len(state["rng"]) == 2
    assert torch.isfinite(torch.tensor(jobs[0]["loss"]))
