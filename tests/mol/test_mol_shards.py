"""Sharded, resumable ``scidiff mol generate IN -o OUT_DIR/ --shard-size N`` (scidiff.mol.shards): shards equal to the
one-file run, every input index exactly once after an interruption (exception, SIGKILL, torn manifest), changed
settings refused, bad lines reported by line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scidiff.cli import main
from scidiff.mol import io as mol_io
from scidiff.mol import pipeline
from scidiff.mol.io import iter_inputs, read_conformers

SMILES = ["CCO", "CCN", "CCC", "CCCl", "CC(=O)O", "CCCC", "C1CC", "c1ccccc1", "CC#N", "N[C@@H](C)C(=O)O",
          "OCCO", "CC(C)O", "C1CCC1", "CCOC", "C=CC", "CNC", "CC(N)=O", "FC(F)F", "c1ccncc1", "C[C@H](O)CC"]
BAD_LINE = 7  # C1CC: an unclosed ring
ARGS = ["--method", "etkdg", "-n", "2", "--batch-size", "1", "--no-progress"]  # batch 1: shard size 5 is a multiple


@pytest.fixture
def smi(tmp_path: Path) -> Path:
    path = tmp_path / "in.smi"
    path.write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(SMILES)))
    return path


def _sharded(smi: Path, out: Path, *extra: str) -> int:
    return main(["mol", "generate", str(smi), "-o", str(out), "--shard-size", "5", *ARGS, *extra])


def _records(sdf: bytes) -> bytes:
    """SDF text without RDKit's per-file record counter in property headers ('>  <smiles>  (12)')."""
    return re.sub(rb"^(>  <[^>]+>)  \(\d+\) *$", rb"\1", sdf, flags=re.M)


def _shard_bytes(out: Path) -> bytes:
    return _records(b"".join(p.read_bytes() for p in sorted(out.glob("shard_*.sdf"))))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _temporaries(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if ".tmp" in p.name or p.name.endswith(".partial")]


def _exactly_once(out: Path) -> None:
    """Every input index in exactly one shard (by its SDF records too) or failure list, shards in order."""
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [e["shard"] for e in lines] == list(range(4)) and [e["start"] for e in lines] == [0, 5, 10, 15]
    indices = [i for e in lines for i, _ in e["done"]] + [f["index"] for e in lines for f in e["failed"]]
    assert sorted(indices) == list(range(len(SMILES)))
    written = [m.GetIntProp("input_index") for m in read_conformers(out)]
    assert written == [i for e in lines for i, _ in e["done"]] == [i for i in range(len(SMILES)) if i != BAD_LINE - 1]
    assert all(n == 2 for e in lines for _, n in e["done"])


@pytest.fixture
def reference(smi: Path, tmp_path: Path) -> bytes:
    """The one-file run of the same inputs and settings."""
    assert main(["mol", "generate", str(smi), "-o", str(tmp_path / "one.sdf"), *ARGS]) == 0
    return _records((tmp_path / "one.sdf").read_bytes())


def test_shards_equal_the_one_file_run_and_report_bad_lines(smi, tmp_path, reference, capsys):
    out = tmp_path / "out"
    assert _sharded(smi, out) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "settings.json", *(f"shard_0000{k}.sdf" for k in range(4))]
    assert _shard_bytes(out) == reference  # same molecules, conformers and record properties, in order
    _exactly_once(out)
    assert f"line {BAD_LINE}: bad SMILES 'C1CC'" in captured.err
    failed = json.loads((out / "manifest.jsonl").read_text().splitlines()[1])["failed"]
    assert failed == [{"name": "mol6", "reason": "line 7: bad SMILES 'C1CC' (unclosed ring)", "index": 6, "line": 7}]
    assert "19/20 molecules succeeded (38 conformers in 4 shards" in captured.out
    settings = json.loads((out / "settings.json").read_text())
    assert settings["n"] == 2 and settings["shard_size"] == 5 and settings["input"] == str(smi.resolve())
    # a rerun of a finished run changes nothing and still counts every shard
    before = _files(out)
    assert _sharded(smi, out) == 0
    assert _files(out) == before
    assert "19/20 molecules succeeded (38 conformers in 4 shards" in capsys.readouterr().out


def test_an_interrupted_run_resumes_after_its_last_shard_without_reparsing(smi, tmp_path, reference, monkeypatch, capsys):
    out = tmp_path / "out"
    etkdg, calls = pipeline.GENERATORS["etkdg"], []

    def interrupted(mols, n, seed=0, **options):  # Ctrl-C in shard 2, after two of its molecules were written
        calls.append(seed)
        if len(calls) == 13:
            raise KeyboardInterrupt
        return etkdg(mols, n, seed, **options)

    monkeypatch.setitem(pipeline.GENERATORS, "etkdg", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _sharded(smi, out)
    monkeypatch.setitem(pipeline.GENERATORS, "etkdg", etkdg)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "settings.json", "shard_00000.sdf", "shard_00001.sdf"]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 2

    parsed = []
    record_from_smiles = mol_io.record_from_smiles
    monkeypatch.setattr(mol_io, "record_from_smiles", lambda index, *a: parsed.append(index) or record_from_smiles(index, *a))
    capsys.readouterr()
    assert _sharded(smi, out) == 0
    assert parsed == list(range(10, 20))  # the records of finished shards are stepped over, not parsed
    assert _shard_bytes(out) == reference and not _temporaries(out)
    _exactly_once(out)
    printed = capsys.readouterr().out  # the summary counts the shards of both runs
    assert "19/20 molecules succeeded (38 conformers in 4 shards in" in printed and "2 shards done by earlier runs" in printed


@pytest.mark.parametrize("finished", [0, 2, 3])  # killed inside the first, a middle and the last shard
def test_a_killed_run_resumes_exactly_once(smi, tmp_path, reference, finished):
    """SIGKILL of a real run (slowed by a sleeping generator) mid-shard, then a rerun: nothing missing or doubled."""
    out = tmp_path / "out"
    script = ("import sys, time; from scidiff.mol import pipeline; etkdg = pipeline.GENERATORS['etkdg']; "
              "pipeline.GENERATORS['etkdg'] = lambda *a, **k: (time.sleep(0.2), etkdg(*a, **k))[1]; "
              "from scidiff.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, "mol", "generate", str(smi), "-o", str(out),
                             "--shard-size", "5", *ARGS], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"

    def lines() -> int:
        return len(manifest.read_text().splitlines()) if manifest.exists() else 0

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if lines() >= finished and out.is_dir() and _temporaries(out):
            time.sleep(0.15)  # into shard `finished`: its temporary file is being written
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert lines() == finished and _temporaries(out)  # killed inside that shard (1 s long)
    assert _sharded(smi, out) == 0
    assert _shard_bytes(out) == reference and not _temporaries(out)
    _exactly_once(out)


def test_a_kill_between_shard_and_manifest_line_redoes_that_shard(smi, tmp_path, reference):
    """Killed after shard 2's SDF was renamed in but while its manifest line was half written, with a temporary
    file of shard 3 left behind: the rerun cuts the torn line, removes the temporary file and redoes shard 2."""
    out = tmp_path / "out"
    assert _sharded(smi, out) == 0
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:2]) + lines[2][:40])
    (out / "shard_00003.sdf").unlink()
    (out / ".shard_00003.sdf.abc123.tmp.sdf.partial").write_text("half a shard")
    assert _sharded(smi, out) == 0
    assert _shard_bytes(out) == reference and not _temporaries(out)
    assert manifest.read_text().splitlines(keepends=True) == lines
    _exactly_once(out)


@pytest.mark.parametrize("change, named", [
    (["-n", "3"], "n (-n/--num-conformers): 2 before, 3 now"),
    (["--seed", "1"], "seed (--seed): 0 before, 1 now"),
    (["--relax", "mmff"], "relax (--relax): 'none' before, 'mmff' now"),
])
def test_a_rerun_with_another_setting_is_refused_naming_it(smi, tmp_path, capsys, change, named):
    out = tmp_path / "out"
    assert _sharded(smi, out) == 0
    before = _files(tmp_path)
    capsys.readouterr()
    assert _sharded(smi, out, *change) == 2
    err = capsys.readouterr().err
    assert named in err and "another -o/--output folder" in err
    assert _files(tmp_path) == before  # refused before anything was written


def test_a_run_that_stopped_before_its_first_shard_may_change_its_settings(smi, tmp_path, monkeypatch, capsys):
    def unavailable(mols, n, seed=0, **options):
        raise pipeline.GenerationUnavailable("weights: no such file")

    out = tmp_path / "out"
    monkeypatch.setitem(pipeline.GENERATORS, "etkdg", unavailable)
    assert _sharded(smi, out) == 2
    assert "weights: no such file" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]  # no shard, no temporary file
    monkeypatch.undo()
    assert _sharded(smi, out, "-n", "3") == 0  # nothing was finished, so nothing to protect
    assert json.loads((out / "settings.json").read_text())["n"] == 3


def test_a_changed_input_and_a_shard_size_are_refused(smi, tmp_path, capsys):
    out = tmp_path / "out"
    assert _sharded(smi, out) == 0
    smi.write_text(smi.read_text() + "CCCCO extra\n")
    assert _sharded(smi, out) == 2
    assert "input_bytes (the input's size)" in capsys.readouterr().err
    assert main(["mol", "generate", str(smi), "-o", str(out), "--shard-size", "4", *ARGS]) == 2
    assert "shard_size (--shard-size): 5 before, 4 now" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--shard-size", "5", "-o", "{tmp}/x.sdf"], "give a folder path, not an SDF"),
    (["--shard-size", "0", "-o", "{tmp}/out"], "--shard-size must be an integer >= 1"),
    (["--shard-size", "5", "-o", "{tmp}/out", "--unassigned-stereo", "enumerate"], "enumerate cannot be sharded"),
    (["--shard-size", "5", "-o", "{tmp}/in.smi"], "is a file, not a folder"),
])
def test_invalid_sharded_runs_exit_2_before_writing(smi, tmp_path, capsys, argv, message):
    before = _files(tmp_path)
    assert main(["mol", "generate", str(smi), *[a.format(tmp=tmp_path) for a in argv], *ARGS]) == 2
    assert message in capsys.readouterr().err
    assert _files(tmp_path) == before and not (tmp_path / "out").exists()


def test_iter_inputs_skips_records_of_smiles_tables_and_sdf_files(smi, tmp_path):
    sdf = tmp_path / "in.sdf"
    assert main(["mol", "generate", str(smi), "-o", str(sdf), *ARGS]) == 0
    for path in (smi, sdf):
        every = [(r.index, r.name, r.line) for r in iter_inputs(path)]
        assert [(r.index, r.name, r.line) for r in iter_inputs(path, skip=7)] == every[7:]
        assert list(iter_inputs(path, skip=len(every))) == []


# --- the same shards through Ray Data (--ray): a local 2-CPU Ray cluster started by the tests ---------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray tests need the scidiff[ray] extra")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_ray_writes_the_same_shards_and_manifest(smi, tmp_path, reference, ray_cluster, capsys):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert _sharded(smi, local) == 0
    assert _sharded(smi, on_ray, "--ray", "--ray-workers", "2") == 0
    assert "19/20 molecules succeeded (38 conformers in 4 shards in" in capsys.readouterr().out
    assert _files(on_ray) == _files(local)  # shard bytes, manifest lines and settings: a Ray run is the same run
    _exactly_once(on_ray)
    # a local rerun continues a Ray run (and the other way round): nothing is redone
    assert _sharded(smi, on_ray) == 0 and _files(on_ray) == _files(local)


def _slow_marking_generator(marks: Path):
    """etkdg, 0.3 s slower per call, leaving a file PID-NAME for each molecule it starts (runs in the Ray actors)."""
    etkdg = pipeline.GENERATORS["etkdg"]

    def generate(mols, n, seed=0, **options):
        for mol in mols:
            (marks / f"{os.getpid()}-{mol.GetProp('_Name')}").touch()
        time.sleep(0.3)
        return etkdg(mols, n, seed, **options)

    return generate


def test_a_killed_ray_worker_is_retried_and_the_output_is_exactly_once(smi, tmp_path, ray_cluster):
    """SIGKILL of the Ray actor that is inside shard 2: Ray restarts it and retries that shard; every input is then
    in exactly one shard or failure list, and the shards are those of a run without Ray."""
    import threading

    from scidiff.mol.shards import RayOptions, generate_shards

    marks = tmp_path / "marks"  # of the Ray actors only (the run without Ray marks its own folder)
    marks.mkdir()
    (tmp_path / "local_marks").mkdir()
    settings = dict(shard_size=5, n=2, method="etkdg", batch_size=1)
    generate_shards(smi, tmp_path / "local", generate_fn=_slow_marking_generator(tmp_path / "local_marks"), **settings)
    settings["generate_fn"] = _slow_marking_generator(marks)
    killed: list[int] = []

    def kill_the_worker_of_shard_2() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for mark in marks.glob("*-mol11"):  # the second molecule of shard 2 [10, 15)
                killed.append(int(mark.name.split("-")[0]))
                assert killed[0] != os.getpid()
                os.kill(killed[0], signal.SIGKILL)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_worker_of_shard_2)
    killer.start()
    out = tmp_path / "ray"
    summary = generate_shards(smi, out, ray=RayOptions(workers=2), **settings)
    killer.join()
    assert killed, "shard 2 was never reached"
    shard_2_workers = {int(m.name.split("-")[0]) for m in marks.glob("*-mol10")}
    assert killed[0] in shard_2_workers and len(shard_2_workers) >= 2  # started by the killed actor, redone by another
    assert summary.succeeded == 19 and summary.shards == 4
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "local") and not _temporaries(out)
    _exactly_once(out)


@pytest.mark.parametrize("argv, message", [
    (["-o", "{tmp}/out", "--ray"], "--ray runs shards: give --shard-size N too"),
    (["-o", "{tmp}/out", "--shard-size", "5", "--ray", "--ray-workers", "0"], "--ray-workers must be an integer >= 1"),
    (["-o", "{tmp}/out", "--shard-size", "5", "--ray", "--ray-cpus", "0"], "--ray-cpus must be > 0"),
])
def test_invalid_ray_runs_exit_2_before_writing(smi, tmp_path, capsys, argv, message):
    before = _files(tmp_path)
    assert main(["mol", "generate", str(smi), *[a.format(tmp=tmp_path) for a in argv], *ARGS]) == 2
    assert message in capsys.readouterr().err
    assert _files(tmp_path) == before and not (tmp_path / "out").exists()
