"""Fault injection for every command that writes (train, mol generate, mol build, mol evaluate, envs collect, policy
rollout): an invalid setting exits 2 naming it before anything is written; a failed or killed run leaves every file
that was there byte-identical and no temporary file behind; a malformed input line or record is reported by its
number and the rest completes.

Each case runs in a workspace holding files a user would not want to lose (``_workspace``); ``_files`` snapshots
every byte of it before and after.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rdkit import Chem

from scidiff.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TRAIN = ["experiment=mixture2d", "model.hidden=16", "model.depth=1", "data.num_samples=256", "trainer.batch_size=64",
         "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.warmup_steps=1", "trainer.progress=false",
         "trainer.tensorboard=false"]
ROLLOUT = ["policy", "rollout", "--episodes", "1", "--num-envs", "1", "--max-steps", "3", "--steps", "2", "--no-progress"]


def _run(argv: list[str]) -> int:
    """``scidiff ARGV`` in this process; argparse's own refusals (SystemExit) count as their exit status."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _temporaries(root: Path) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace: an input table, a finished SDF, a note, a folder with a file in it."""
    (tmp_path / "in.smi").write_text("CCO ethanol\nCCN ethylamine\n")
    (tmp_path / "precious.sdf").write_text("keep me\n$$$$\n")
    (tmp_path / "notes.txt").write_text("a user's file\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inside.txt").write_text("also kept\n")
    (tmp_path / "weights.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    return tmp_path


# ----------------------------------------------------------------------------- invalid settings and output paths

# (argv with {ws} for the workspace, text the error must contain). None of them may write anything.
INVALID = [
    # scidiff train
    ([*TRAIN, "trainer.lr=fast", "trainer.out_dir={ws}/run"], "trainer.lr must be a number"),
    ([*TRAIN, "model.hidden=big", "trainer.out_dir={ws}/run"], "model.hidden must be an integer"),
    ([*TRAIN, "trainer.ema=maybe", "trainer.out_dir={ws}/run"], "trainer.ema must be a boolean"),
    ([*TRAIN, "trainer.max_steps=0", "trainer.out_dir={ws}/run"], "trainer.max_steps must be an integer >= 1"),
    ([*TRAIN, "trainer.batch_size=-1", "trainer.out_dir={ws}/run"], "trainer.batch_size must be an integer >= 1"),
    ([*TRAIN, "sampler.steps=0", "trainer.out_dir={ws}/run"], "sampler.steps must be an integer >= 1"),
    ([*TRAIN, "process.name=vq", "trainer.out_dir={ws}/run"], "process.name: unknown process 'vq'"),
    ([*TRAIN, "trainer.out_dir={ws}/notes.txt"], "trainer.out_dir {ws}/notes.txt is a file"),
    ([*TRAIN, "trainer.out_dir={ws}/notes.txt/run"], "notes.txt is a file, not a folder"),
    ([*TRAIN, "trainer.out_dir=/proc/run"], "trainer.out_dir /proc/run: cannot write in /proc"),
    (["train", "--threads", "0", *TRAIN, "trainer.out_dir={ws}/run"], "--threads must be an integer >= 1"),
    # scidiff mol generate
    (["mol", "generate", "CCO", "-o", "{ws}/x.sdf", "--steps", "0", "--method", "scidiff"], "steps (--steps) must be"),
    (["mol", "generate", "CCO", "-o", "{ws}/x.sdf", "--batch-size", "0"], "batch_size (--batch-size) must be"),
    (["mol", "generate", "CCO", "-o", "{ws}/x.sdf", "--max-resample", "-1"], "max_resample (--max-resample) must be"),
    (["mol", "generate", "CCO", "-o", "{ws}/x.sdf", "-n", "0"], "n (-n/--num-conformers) must be"),
    (["mol", "generate", "CCO", "-o", "{ws}/x.sdf", "--sampler", "fast"], "sampler (--sampler): unknown 'fast'"),
    (["mol", "generate", "CCO", "-o", "{ws}/x.sdf", "--threads", "0"], "--threads must be an integer >= 1"),
    (["mol", "generate", "CCO", "-o", "{ws}/x.sdf", "--unassigned-stereo", "guess"], None),  # argparse: exit 2
    (["mol", "generate", "CCO", "-o", "{ws}/folder"], "is a folder"),
    (["mol", "generate", "CCO", "-o", "{ws}/out.mol2"], "conformers are written as SDF"),
    (["mol", "generate", "CCO", "-o", "{ws}/notes.txt/x.sdf"], "notes.txt is a file, not a folder"),
    (["mol", "generate", "CCO", "-o", "/proc/x.sdf"], "cannot write in /proc"),
    (["mol", "generate", "{ws}/precious.sdf", "-o", "{ws}/precious.sdf"], "is the input file"),
    (["mol", "generate", "CCO", "-o", "{ws}/x.sdf", "--method", "scidiff", "--checkpoint", "{ws}/weights.safetensors"],
     "weights.safetensors: not a readable safetensors file"),
    (["mol", "generate", "{ws}/missing.smi", "-o", "{ws}/x.sdf"], "no input file"),
    # scidiff mol build
    (["mol", "build", "{ws}/in.smi", "--out", "{ws}/notes.txt"], "--out {ws}/notes.txt is a file"),
    (["mol", "build", "{ws}/in.smi", "--out", "{ws}/b", "--conformers", "0"], "--conformers must be an integer >= 1"),
    (["mol", "build", "{ws}/in.smi", "--out", "{ws}/b", "--shard-size", "0"], "--shard-size must be an integer >= 1"),
    (["mol", "build", "{ws}/in.smi", "--out", "{ws}/b", "--limit", "0"], "--limit must be an integer >= 1"),
    (["mol", "build", "{ws}/in.smi", "--out", "{ws}/b", "--processes", "0"], "--processes must be an integer >= 1"),
    # scidiff mol evaluate
    (["mol", "evaluate", "--reference", "{ws}/in.smi", "-n", "0"], "-n/--num-conformers must be an integer >= 1"),
    (["mol", "evaluate", "--reference", "{ws}/in.smi", "--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["mol", "evaluate", "--reference", "{ws}/in.smi", "--json", "{ws}/folder"], "--json {ws}/folder is a folder"),
    (["mol", "evaluate", "--reference", "{ws}/in.smi", "--json", "{ws}/in.smi"], "is the input file"),
    (["mol", "evaluate", "--reference", "{ws}/in.smi", "--json", "/proc/e.json"], "cannot write in /proc"),
    (["mol", "evaluate", "--reference", "{ws}/in.smi", "--generated", "{ws}/none.sdf"], "--generated {ws}/none.sdf"),
    # scidiff envs collect
    (["envs", "collect", "--env", "scidiff/Particle-v0", "--episodes", "0", "--out", "{ws}/d.zarr"],
     "--episodes must be an integer >= 1"),
    (["envs", "collect", "--env", "scidiff/Particle-v0", "--out", "{ws}/notes.txt"], "is a file, not a folder"),
    (["envs", "collect", "--env", "scidiff/Particle-v0", "--out", "{ws}/folder"], "not a replay buffer"),
    (["envs", "collect", "--env", "scidiff/Particle-v0", "--out", "{ws}", "--episodes", "1"], "not a replay buffer"),
    # scidiff policy rollout
    ([*ROLLOUT, "--video", "/proc/out.mp4", "--json", "{ws}/s.json"], "--video /proc/out.mp4: cannot write in /proc"),
    ([*ROLLOUT, "--video", "{ws}/v.mp4", "--video-episodes", "0"], "--video-episodes must be an integer >= 1"),
    ([*ROLLOUT, "--max-steps", "0"], "--max-steps must be an integer >= 1, got 0"),
    ([*ROLLOUT, "--max-steps", "-1"], "--max-steps must be an integer >= 1, got -1"),
    ([*ROLLOUT, "--episodes", "0"], "--episodes must be an integer >= 1"),
    ([*ROLLOUT, "--num-envs", "0"], "--num-envs must be an integer >= 1"),
    ([*ROLLOUT, "--steps", "0"], "sampler.steps must be an integer >= 1"),
    ([*ROLLOUT, "--sampler", "fast"], "unknown sampler 'fast'"),
    ([*ROLLOUT, "--threads", "0"], "--threads must be an integer >= 1"),
    ([*ROLLOUT, "--video", "{ws}/v.avi"], "videos are written as MP4 or GIF"),
    ([*ROLLOUT, "--json", "{ws}/notes.txt/s.json"], "notes.txt is a file, not a folder"),
    ([*ROLLOUT, "--json", "{ws}/folder"], "--json {ws}/folder is a folder"),
    ([*ROLLOUT, "--json", "{ws}/s.json", "--video", "{ws}/s.json"], None),  # .json is no video suffix
    ([*ROLLOUT, "--checkpoint", "{ws}/missing.safetensors"], "no policy checkpoint at"),
    ([*ROLLOUT, "--checkpoint", "{ws}/weights.safetensors", "--json", "{ws}/s.json"],
     "weights.safetensors: not a readable safetensors file"),
    ([*ROLLOUT, "--checkpoint", "{ws}/weights.safetensors", "--json", "{ws}/weights.safetensors"], "is the input file"),
    # scidiff policy export
    (["policy", "export", "--checkpoint", "{ws}/weights.safetensors", "--out", "{ws}/weights.safetensors"],
     "is the input file"),
    (["policy", "export", "--checkpoint", "{ws}/weights.safetensors", "--out", "{ws}/p.pt"],
     "policies are written as safetensors"),
    (["policy", "export", "--checkpoint", "{ws}/weights.safetensors", "--out", "{ws}/p.safetensors"],
     "weights.safetensors: not a readable safetensors file"),
]


@pytest.mark.parametrize("argv, message", INVALID, ids=[" ".join(a[-4:]) for a, _ in INVALID])
def test_an_invalid_setting_exits_2_naming_it_before_anything_is_written(ws, capsys, argv, message):
    argv = [a.replace("{ws}", str(ws)) for a in argv]
    if argv[0].startswith("experiment="):
        argv = ["train", *argv]
    before = _files(ws)
    assert _run(argv) == 2
    err = capsys.readouterr().err
    if message is not None:
        assert message.replace("{ws}", str(ws)) in err, err
    assert "Traceback" not in err
    assert _files(ws) == before  # nothing written, nothing changed


# ------------------------------------------------------------------------------------ train: resume and disk faults


def _train(ws: Path, *overrides: str) -> int:
    return _run(["train", *TRAIN, f"trainer.out_dir={ws / 'run'}", *overrides])


@pytest.fixture
def trained(ws: Path) -> Path:
    assert _train(ws) == 0
    return ws


@pytest.mark.parametrize("overrides, message", [
    (["process=flow", "trainer.max_steps=6"], "process.name: 'vp' -> 'flow'"),
    (["model.hidden=32", "trainer.max_steps=6"], "model.hidden: 16 -> 32"),
    (["trainer.lr=0.5", "trainer.max_steps=6"], "trainer.lr: 0.002 -> 0.5"),
    (["data.num_samples=512", "trainer.max_steps=6"], "data.num_samples: 256 -> 512"),
    (["trainer.max_steps=2"], "trainer.max_steps=2 is below step 4"),
])
def test_a_rerun_that_would_resume_under_other_settings_exits_2_before_writing(trained, capsys, overrides, message):
    capsys.readouterr()
    before = _files(trained)
    assert _train(trained, *overrides) == 2
    err = capsys.readouterr().err
    assert message in err and "trainer.resume=false" in err and "Traceback" not in err
    assert _files(trained) == before  # config.yaml included


def test_a_finished_run_says_so_in_valid_json(trained, capsys):
    import json

    capsys.readouterr()
    before = _files(trained)
    assert _train(trained) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip()) == {"step": 4, "loss": None, "out_dir": str(trained / "run")}
    assert "already trained to trainer.max_steps=4" in out.err and _files(trained) == before


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_checkpoint_is_named_exit_2_and_nothing_is_rewritten(trained, capsys, damage):
    last = trained / "run" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x80\x04not a checkpoint")
    before = _files(trained)
    capsys.readouterr()
    assert _train(trained, "trainer.max_steps=6") == 2
    err = capsys.readouterr().err
    assert f"{last}: not a readable training checkpoint" in err and "Traceback" not in err
    assert _files(trained) == before


def test_a_full_disk_while_checkpointing_keeps_the_checkpoint_and_no_temporary_file(trained, capsys, monkeypatch):
    from scidiff.core import checkpoint

    def full(state, path):
        Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 512)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    run = trained / "run"
    kept = {name: (run / name).read_bytes() for name in ("checkpoints/last.pt", "model.safetensors")}
    capsys.readouterr()
    assert _train(trained, "trainer.max_steps=6") == 1
    assert "no space left on the disk to write" in capsys.readouterr().err
    assert {name: (run / name).read_bytes() for name in kept} == kept and not _temporaries(trained)


def test_a_run_killed_mid_write_has_its_temporary_files_removed_by_the_next(trained):
    stale = [trained / "run" / "checkpoints" / ".last.pt.x1y2z3.tmp", trained / "run" / ".model.safetensors.q.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 10_000)  # what SIGKILL during torch.save leaves
    assert _train(trained, "trainer.max_steps=6") == 0
    assert not _temporaries(trained)


# --------------------------------------------------------------------------- mol generate / build / evaluate faults


def test_mol_generate_interrupted_keeps_the_old_output_and_the_molecules_done(ws):
    import argparse

    from scidiff.mol.cli import run_generate
    from scidiff.mol.pipeline import etkdg_generator

    calls = []

    def interrupted(mols, n, seed, **options):
        calls.append(len(mols))
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second batch
        return etkdg_generator(mols, n, seed, **options)

    source = ws / "four.smi"
    source.write_text("CCO a\nCCN b\nCCC c\nCCCl d\n")
    before = _files(ws)
    args = argparse.Namespace(input=str(source), output=ws / "precious.sdf", num_conformers=1, method="etkdg", seed=0,
                              batch_size=2, relax="none", max_resample=0, no_progress=True, smiles_column=None,
                              id_column=None, sampler=None, steps=None, device=None, checkpoint=None, core=None)
    with pytest.raises(KeyboardInterrupt):
        run_generate(args, interrupted)
    after = _files(ws)
    kept = after.pop("precious.sdf.partial")
    assert after == before  # the old OUT untouched
    assert [m.GetProp("_Name") for m in Chem.SDMolSupplier(str(ws / "precious.sdf.partial"))] == ["a", "b"] and kept


def test_mol_generate_killed_keeps_the_old_output(ws):
    source = ws / "many.smi"
    source.write_text("".join(f"{'C' * (i % 12 + 2)}O m{i}\n" for i in range(400)))
    before = _files(ws)
    proc = subprocess.Popen([sys.executable, "-m", "scidiff.cli", "mol", "generate", str(source), "-n", "2",
                             "--batch-size", "4", "-o", str(ws / "precious.sdf"), "--no-progress"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial, deadline = ws / "precious.sdf.partial", time.time() + 60
    while not (partial.exists() and partial.stat().st_size) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the run must be killed part-way"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    after = _files(ws)
    after.pop("precious.sdf.partial")
    assert after == before


def test_mol_build_failing_in_a_shard_keeps_the_finished_shards(ws, monkeypatch, capsys):
    from scidiff.mol import build

    source = ws / "build.smi"
    source.write_text("CCO a\nCCN b\nCCC c\nCCCl d\n")
    argv = ["mol", "build", str(source), "--out", str(ws / "shards"), "--conformers", "1", "--shard-size", "2",
            "--processes", "1", "--no-mmff"]
    real, calls = build._conformers, []

    def full_disk_after_one_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(build, "_conformers", full_disk_after_one_shard)
    assert _run(argv) == 1  # shard 0 written, shard 1 failed
    before = _files(ws)
    assert "shards/shard_00000.sdf" in before and not any(k.startswith("shards/shard_00001") for k in before)
    assert _run(argv) == 1 and _files(ws) == before and not _temporaries(ws)  # fails again: nothing changed
    monkeypatch.setattr(build, "_conformers", real)
    assert _run(argv) == 0  # the rerun finishes the build, reusing the finished shard as it was
    after = _files(ws)
    assert {k: after[k] for k in before} == before and "shards/shard_00001.sdf" in after
    assert "1 shards written, 1 already done" in capsys.readouterr().out


def test_mol_evaluate_failing_keeps_the_old_json(ws, monkeypatch):
    from scidiff.mol import cli

    (ws / "e.json").write_text('{"old": "results"}\n')
    real = cli.evaluate_method

    def second_fails(name, *args, **kwargs):
        if name == "etkdg_mmff":
            raise RuntimeError("injected failure in the second method")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(cli, "evaluate_method", second_fails)
    before = _files(ws)
    with pytest.raises(RuntimeError, match="injected"):
        _run(["mol", "evaluate", "--reference", str(ws / "in.smi"), "-n", "1", "--no-posebusters", "--no-progress",
              "--json", str(ws / "e.json")])
    assert _files(ws) == before and not _temporaries(ws)


# -------------------------------------------------------------------------------------- envs collect / rollout faults


def test_envs_collect_failing_or_killed_keeps_the_old_buffer(ws, monkeypatch, capsys):
    from envs import replay_buffer

    out = ws / "demos.zarr"
    argv = ["envs", "collect", "--env", "scidiff/Particle-v0", "--episodes", "2", "--out", str(out), "--no-progress"]
    assert _run(argv) == 0
    before = _files(ws)

    def full(group, name, array):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(replay_buffer, "_write_array", full)
        assert _run(argv) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert _files(ws) == before and not [p for p in ws.iterdir() if ".tmp-" in p.name]
    proc = subprocess.Popen([sys.executable, "-m", "scidiff.cli", *argv[:4], "--episodes", "20000", *argv[6:]], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(3)
    assert proc.poll() is None, "the run must be killed part-way"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _files(ws) == before


def test_a_failed_video_keeps_the_old_video_and_the_rollout_results(ws, monkeypatch, capsys):
    import json

    from envs import video

    (ws / "v.mp4").write_bytes(b"an old video")

    def broken_pipe(path, frames, **kwargs):
        Path(path).write_bytes(b"half a video")
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr(video.imageio, "mimwrite", broken_pipe)
    before = _files(ws)
    assert _run([*ROLLOUT, "--video", str(ws / "v.mp4"), "--json", str(ws / "s.json")]) == 1
    captured = capsys.readouterr()
    assert "Broken pipe" in captured.err and "Traceback" not in captured.err
    after = _files(ws)
    assert json.loads(after.pop("s.json"))["episodes"] == 1 and after == before and not _temporaries(ws)


# --------------------------------------------------------------------------- malformed input lines and records


def test_malformed_smiles_lines_are_reported_by_line_and_the_rest_completes(ws, capsys):
    source = ws / "mixed.csv"
    source.write_bytes(b"smiles,name\nCCO,ok1\nC1CC,ring\nCC\xffO,byte\n,empty\nCC[Sn](C)(C)C,tin\nCCN,ok2\n"
                       b"C(C)(C)(C)(C)C,five\n")
    assert _run(["mol", "generate", str(source), "-n", "1", "-o", str(ws / "out.sdf"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "2/7 molecules succeeded" in out.out
    for expected in ("(ring): line 3: bad SMILES 'C1CC'", "line 4: not UTF-8 text (byte 0xff)",
                     "(empty): line 5: no SMILES in column 1", "(tin): line 6: ", "(five): line 8: "):
        assert expected in out.err, (expected, out.err)
    assert [m.GetProp("_Name") for m in Chem.SDMolSupplier(str(ws / "out.sdf"))] == ["ok1", "ok2"]


def test_malformed_sdf_records_are_reported_by_line_and_the_rest_completes(ws, capsys):
    def block(smiles: str, name: str) -> bytes:
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("_Name", name)
        return (Chem.MolToMolBlock(mol) + "$$$$\n").encode()

    records = [block("CCO", "first"), block("CCN", "broken").replace(b"V2000", b"V2999"),
               block("CCC", "tXtle").replace(b"tXtle", b"t\xfftle"), block("CCCl", "last")]
    (ws / "records.sdf").write_bytes(b"".join(records))
    assert _run(["mol", "generate", str(ws / "records.sdf"), "-n", "1", "-o", str(ws / "out.sdf"), "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "2/4 molecules succeeded" in out.out
    second, third = (1 + sum(r.count(b"\n") for r in records[:k]) for k in (1, 2))
    assert f"line {second}: unreadable SDF record" in out.err and f"line {third}: the title line is not UTF-8" in out.err
    assert [m.GetProp("_Name") for m in Chem.SDMolSupplier(str(ws / "out.sdf"))] == ["first", "last"]


def test_malformed_reference_lines_are_reported_and_the_evaluation_completes(ws, capsys):
    (ws / "ref.smi").write_bytes(b"CCO a\nC1CC ring\nCC\xffN byte\nCCN b\n")
    assert _run(["mol", "evaluate", "--reference", str(ws / "ref.smi"), "--method", "etkdg", "-n", "1",
                 "--no-posebusters", "--no-progress", "--json", str(ws / "e.json")]) == 0
    out = capsys.readouterr()
    assert "line 2: bad SMILES 'C1CC'" in out.err and "line 3: not UTF-8 text (byte 0xff)" in out.err
    assert "2 molecules, 2 skipped" in out.out and (ws / "e.json").is_file()


def test_malformed_build_lines_are_skipped_with_their_reason_and_the_rest_completes(ws, capsys):
    (ws / "b.smi").write_bytes(b"CCO a\nC1CC ring\nCC\xffN byte\nCCN b\n")
    assert _run(["mol", "build", str(ws / "b.smi"), "--out", str(ws / "b"), "--conformers", "1", "--processes", "1",
                 "--no-mmff"]) == 0
    assert "2 molecules, 2 conformers, 2 skipped" in capsys.readouterr().out
    skipped = (ws / "b" / "shard_00000.skipped.tsv").read_text()
    assert "ring" in skipped and "C1CC" in skipped and len(list(Chem.SDMolSupplier(str(ws / "b" / "shard_00000.sdf")))) == 2
