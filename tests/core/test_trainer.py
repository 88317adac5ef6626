"""The shared training loop: exact resume, DDP equivalence, failure modes, logs and safe checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from scidiff.core import EDM, diffusion_loss
from scidiff.core.checkpoint import load_inference, load_training_state, save_inference
from scidiff.core.ema import ema_decay
from scidiff.core.trainer import TrainConfig, shuffled_batches, train
from scidiff.toy import MLPDenoiser, ring_mixture

HERE = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _toy_setup():
    data = ring_mixture().sample(512, torch.Generator().manual_seed(0)).float()
    process = EDM()

    def loss_fn(net, batch, generator):
        return diffusion_loss(net, batch, process, "edm", generator=generator)

    return data, loss_fn


def _config(tmp_path, name, **overrides):
    values = dict(out_dir=str(tmp_path / name), max_steps=30, batch_size=64, lr=1e-3, warmup_steps=5,
                  checkpoint_every=10, log_every=5, progress=False, tensorboard=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_resume_after_crash_equals_uninterrupted(tmp_path):
    data, loss_fn = _toy_setup()
    torch.manual_seed(0)
    full = train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "full"))

    calls = {"n": 0}

    def crashing_loss(net, batch, generator):
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("simulated crash")
        return loss_fn(net, batch, generator)

    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(MLPDenoiser(hidden=32, depth=2), data, crashing_loss, _config(tmp_path, "crash"))
    assert load_training_state(tmp_path / "crash" / "checkpoints" / "last.pt")["step"] == 20
    torch.manual_seed(123)  # a resumed run must not depend on the caller's RNG
    resumed = train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "crash"))
    assert resumed.step == full.step == 30
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)


def test_killed_cli_run_resumes_bit_exactly(tmp_path):
    """SIGKILL a `scidiff train` run after its first checkpoint; rerunning the command finishes it bit-exactly."""
    args = ["experiment=mixture2d", "trainer.max_steps=400", "trainer.checkpoint_every=50", "trainer.batch_size=64",
            "model.hidden=32", "model.depth=2", "data.num_samples=2000", "trainer.progress=false",
            "trainer.tensorboard=false", "trainer.warmup_steps=10"]
    cmd = [sys.executable, "-m", "scidiff.cli", "train", *args]
    subprocess.run(cmd + [f"trainer.out_dir={tmp_path / 'full'}"], check=True, env=ENV, capture_output=True)
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [f"trainer.out_dir={killed_dir}"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = killed_dir / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = load_training_state(ckpt)["step"]
    assert 0 < step_at_kill < 400, "the run must be killed part-way"
    subprocess.run(cmd + [f"trainer.out_dir={killed_dir}"], check=True, env=ENV, capture_output=True)
    full = load_training_state(tmp_path / "full" / "checkpoints" / "last.pt")
    resumed = load_training_state(ckpt)
    assert resumed["step"] == full["step"] == 400
    for key in full["model"]:
        assert torch.equal(full["model"][key], resumed["model"][key]), key
    config = (killed_dir / "config.yaml").read_text()
    assert "max_steps: 400" in config  # the resolved config is saved with the run


def test_ddp_two_processes_match_single_process(tmp_path):
    """2-process gloo DDP (each rank half of every global batch) matches one process on the whole batch."""
    script = str(HERE / "ddp_train_script.py")
    subprocess.run([sys.executable, script, str(tmp_path / "single")], check=True, env=ENV, capture_output=True)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", script,
         str(tmp_path / "ddp")], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    single = load_training_state(tmp_path / "single" / "checkpoints" / "last.pt")
    ddp = load_training_state(tmp_path / "ddp" / "checkpoints" / "last.pt")
    assert len(ddp["rng"]) == 2 and ddp["step"] == single["step"] == 20
    for key in single["model"]:
        assert torch.allclose(single["model"][key], ddp["model"][key], atol=1e-6), key


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    data, _ = _toy_setup()
    data[7, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* at step \d+; the last good checkpoint"):
        train(MLPDenoiser(hidden=16, depth=1), data,
              lambda net, batch, g: ((net(batch, torch.zeros(len(batch))) - batch) ** 2).mean(),
              _config(tmp_path, "nan", max_steps=50))


def test_logs_and_inference_file(tmp_path):
    data, loss_fn = _toy_setup()
    result = train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "logs", tensorboard=True),
                   run_config={"model": {"hidden": 32, "depth": 2}})
    lines = [json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15, 20, 25, 30]
    assert all(r["loss"] > 0 and "lr" in r and "grad_norm" in r for r in lines)
    assert any((result.out_dir / "tensorboard").iterdir())
    state, config = load_inference(result.out_dir / "model.safetensors")
    assert config["model"] == {"hidden": 32, "depth": 2} and config["trainer"]["max_steps"] == 30
    for key, value in result.ema_model.state_dict().items():
        assert torch.equal(state[key], value)


def test_steps_per_s_counts_training_only(tmp_path, monkeypatch):
    # a clock that moves only when told: 1 s per training step, 100 s per evaluation (rollouts take minutes), so
    # every logged steps/s is exactly 1 if, and only if, evaluations and checkpoints are left out of it
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    data, loss_fn = _toy_setup()

    def timed_loss(net, batch, generator):
        clock[0] += 1.0
        return loss_fn(net, batch, generator)

    def evaluate(model, step):
        clock[0] += 100.0
        return {"score": float(step)}

    result = train(MLPDenoiser(hidden=32, depth=2), data, timed_loss, _config(tmp_path, "speed", eval_every=10),
                   evaluate=evaluate)
    rates = [r["steps_per_s"] for r in result.history if "steps_per_s" in r]
    assert len(rates) == 6 and rates == pytest.approx([1.0] * 6)
    assert [r["eval/score"] for r in result.history if "eval/score" in r] == [10.0, 20.0, 30.0]


def test_checkpoints_never_unpickle(tmp_path):
    """A training-state file carrying arbitrary Python objects is refused, not executed."""

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "payload": Payload()}, path)
    with pytest.raises(Exception):
        load_training_state(path)
    assert not (tmp_path / "pwned").exists()


def test_inference_file_requires_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(ValueError, match="not a scidiff inference file"):
        load_inference(tmp_path / "bare.safetensors")
    save_inference(tmp_path / "ok.safetensors", {"w": torch.ones(2)}, {"a": 1})
    assert load_inference(tmp_path / "ok.safetensors")[1] == {"a": 1}


def test_ema_warmup_decay():
    assert ema_decay(0) == 0.0
    assert ema_decay(9) == pytest.approx(1 - 10**-0.75)
    assert ema_decay(10**9) == 0.9999


def test_batches_are_a_pure_function_of_seed_and_epoch():
    assert shuffled_batches(100, 32, seed=1, epoch=3) == shuffled_batches(100, 32, seed=1, epoch=3)
    assert shuffled_batches(100, 32, seed=1, epoch=3) != shuffled_batches(100, 32, seed=1, epoch=4)
    assert [len(b) for b in shuffled_batches(100, 32, 0, 0)] == [32, 32, 32]
    with pytest.raises(ValueError, match="fewer than trainer.batch_size"):
        shuffled_batches(10, 32, 0, 0)


@pytest.mark.parametrize("values,field", [
    ({"max_steps": 0}, "trainer.max_steps"), ({"lrr": 1e-3}, "lrr"), ({"precision": "fp8"}, "trainer.precision"),
    ({"batch_size": -1}, "trainer.batch_size"),
])
def test_bad_trainer_config_names_the_field(values, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        TrainConfig.from_mapping(values)


@pytest.mark.parametrize("override,message", [
    ("sampler.name=ddin", "sampler.name: unknown sampler 'ddin'"),
    ("sampler.steps=0", "sampler.steps must be an integer >= 1"),
    ("process=flow process.prediction=epsilon", "process.prediction: 'epsilon' cannot recover x0"),
    ("trainer.max_steps=0", "trainer.max_steps must be an integer >= 1"),
    ("trainer.init_weights=nowhere/model.safetensors", "trainer.init_weights: no weights file at nowhere/model.safetensors"),
])
def test_cli_reports_bad_config(override, message, tmp_path, capsys):
    from scidiff.cli import main

    code = main(["train", *override.split(), f"trainer.out_dir={tmp_path}", "trainer.progress=false"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_bf16_autocast_trains_on_cpu(tmp_path):
    data, loss_fn = _toy_setup()
    result = train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "bf16", precision="bf16"))
    losses = [r["loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert next(result.model.parameters()).dtype == torch.float32  # weights stay fp32; only compute is bf16


@pytest.mark.slow
def test_compile_matches_eager(tmp_path):
    """model.compile() (in place) trains to the same weights as eager, up to kernel rounding."""
    data, loss_fn = _toy_setup()
    torch.manual_seed(0)
    eager = train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "eager", max_steps=10))
    torch.manual_seed(0)
    compiled = train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "compiled", max_steps=10,
                                                                              compile=True))
    assert set(eager.model.state_dict()) == set(compiled.model.state_dict())  # no "_orig_mod." prefix
    for key, value in eager.model.state_dict().items():
        assert torch.allclose(value, compiled.model.state_dict()[key], atol=1e-4), key


def test_ema_pairs_parameters_and_buffers_by_name():
    """A copy with an extra buffer (as e3nn's generated modules gain when deep-copied) still tracks by name."""
    from scidiff.core.ema import EMA

    model = nn.BatchNorm1d(3)
    ema = EMA(model)
    ema.module.register_buffer("_tensor_constant0", torch.zeros(7))
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(model)  # first update copies (decay 0)
    assert torch.equal(ema.module.weight, model.weight) and torch.equal(ema.module.running_mean, model.running_mean)


def test_rank_shares_cover_uneven_batches():
    from scidiff.core.distributed import DistInfo
    from scidiff.core.trainer import _StepBatches

    plan = lambda epoch: [[0, 1, 2, 3, 4], [5, 6, 7]]  # noqa: E731 (node-balanced batches vary in size)
    shares = [list(zip(range(2), _StepBatches(plan, 0, DistInfo(rank, 2)))) for rank in range(2)]
    assert [s for _, s in shares[0]] == [[0, 2, 4], [5, 7]] and [s for _, s in shares[1]] == [[1, 3], [6]]


def test_resume_refuses_other_settings_and_allows_longer_runs(tmp_path):
    """One check per resume: a changed model or process is refused by name before anything is loaded or written."""
    data, loss_fn = _toy_setup()
    run = {"model": {"hidden": 32, "depth": 2}, "process": {"name": "edm"}}
    train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "r", max_steps=10), run_config=run)
    folder = tmp_path / "r"
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    other = {"model": {"hidden": 16, "depth": 2}, "process": {"name": "flow"}}
    with pytest.raises(ValueError, match=r"model\.hidden: 32 -> 16; process\.name: 'edm' -> 'flow'.*trainer\.resume=false"):
        train(MLPDenoiser(hidden=16, depth=2), data, loss_fn, _config(tmp_path, "r", max_steps=20), run_config=other)
    with pytest.raises(ValueError, match=r"trainer\.max_steps=5 is below step 10"):
        train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "r", max_steps=5), run_config=run)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    # more steps, other logging and checkpoint frequencies: the same run, continued
    result = train(MLPDenoiser(hidden=32, depth=2), data, loss_fn,
                   _config(tmp_path, "r", max_steps=20, log_every=2, checkpoint_every=4), run_config=run)
    assert result.step == 20


def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from scidiff.core import checkpoint

    data, loss_fn = _toy_setup()
    train(MLPDenoiser(hidden=16, depth=1), data, loss_fn, _config(tmp_path, "disk", max_steps=10))
    folder = tmp_path / "disk" / "checkpoints"
    before = (folder / "last.pt").read_bytes()

    def full_disk(state, path):  # what torch's zip writer does when the disk fills: a short file, then an error
        Path(path).write_bytes(b"PK\x03\x04" + b"\0" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 1004 vs 48213")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"no space left on the disk to write .*last\.pt \(.* MiB free in .*\); the previous "
                                      r"last\.pt is intact"):
        train(MLPDenoiser(hidden=16, depth=1), data, loss_fn, _config(tmp_path, "disk", max_steps=20))
    assert (folder / "last.pt").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt"]

    def enospc(state, path):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", enospc)
    with pytest.raises(OSError, match="no space left on the disk"):
        checkpoint.save_training_state(folder / "last.pt", {"step": 1})
    assert (folder / "last.pt").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["last.pt"]


def test_temporary_files_of_killed_writes_are_removed_when_the_next_run_starts(tmp_path):
    data, loss_fn = _toy_setup()
    folder = tmp_path / "stale" / "checkpoints"
    folder.mkdir(parents=True)
    stale = [folder / ".last.pt.k1lled.tmp", tmp_path / "stale" / ".model.safetensors.abc123.tmp.safetensors"]
    for path in stale:
        path.write_bytes(b"\0" * 4096)
    keep = folder / "notes.tmp.txt"  # not a temporary file of a checkpoint
    keep.write_text("mine")
    train(MLPDenoiser(hidden=16, depth=1), data, loss_fn, _config(tmp_path, "stale", max_steps=5))
    assert not any(p.exists() for p in stale) and keep.read_text() == "mine"


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", b"not a checkpoint at all\n" * 10])
def test_truncated_or_foreign_checkpoints_name_the_file(tmp_path, content):
    from scidiff.core.checkpoint import load_training_state

    good = tmp_path / "good.pt"
    torch.save({"step": 3, "w": torch.zeros(1000)}, good)
    bad = tmp_path / "last.pt"
    bad.write_bytes(content or good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError, match=r"last\.pt: not a readable training checkpoint \(expected a torch\.save archive"):
        load_training_state(bad)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(content or b"\xff" * 64)
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file \(expected scidiff weights"):
        load_inference(weights)


def test_warm_start_begins_at_the_given_weights_and_refuses_ones_that_do_not_fit(tmp_path):
    data, loss_fn = _toy_setup()
    torch.manual_seed(0)
    first = train(MLPDenoiser(hidden=32, depth=2), data, loss_fn, _config(tmp_path, "first"))
    saved, _ = load_inference(first.out_dir / "model.safetensors")
    seen = {}

    def recording_loss(net, batch, generator):
        seen.setdefault("start", {k: v.detach().clone() for k, v in net.state_dict().items()})
        return loss_fn(net, batch, generator)

    torch.manual_seed(1)  # another initialisation, which the warm start must replace
    warm_cfg = _config(tmp_path, "warm", max_steps=5, init_weights=str(first.out_dir / "model.safetensors"))
    warm = train(MLPDenoiser(hidden=32, depth=2), data, recording_loss, warm_cfg)
    assert seen["start"].keys() == saved.keys()
    assert all(torch.equal(seen["start"][k], saved[k]) for k in saved)
    assert not all(torch.equal(a, saved[k]) for k, a in warm.model.state_dict().items())  # and then it trains

    with pytest.raises(ValueError, match=r"trainer\.init_weights=.*do not fit this model"):
        train(MLPDenoiser(hidden=16, depth=2), data, loss_fn,
              _config(tmp_path, "narrow", init_weights=warm_cfg.init_weights))
    with pytest.raises(FileNotFoundError, match=r"trainer\.init_weights: no weights file at .*missing\.safetensors"):
        _config(tmp_path, "missing", init_weights=str(tmp_path / "missing.safetensors"))
