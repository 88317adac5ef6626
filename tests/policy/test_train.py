"""The policy task end to end: Hydra config -> expert data -> the core's train() -> rollouts; resume through the trainer."""

import json

import numpy as np
import pytest
import torch

from scidiff.cli import main
from scidiff.core.checkpoint import load_training_state
from scidiff.core.config import compose, to_container
from scidiff.policy import cli as policy_cli
from scidiff.policy import load_policy
from scidiff.policy import train as policy_train
from scidiff.policy.rollout import rollout, summarize

from .test_rollout import RandomPolicy


def particle_config(out_dir, **overrides) -> dict:
    """The particle experiment shrunk to seconds: a tiny U-Net, short horizon, few expert episodes."""
    values = {
        "trainer.out_dir": str(out_dir), "trainer.max_steps": 300, "trainer.batch_size": 32, "trainer.lr": 3e-3,
        "trainer.warmup_steps": 20, "trainer.checkpoint_every": 100, "trainer.log_every": 50,
        "trainer.eval_every": 0, "trainer.progress": False, "trainer.tensorboard": False,
        "model.down_dims": "[16,32]", "model.step_embed_dim": 32, "policy.horizon": 8, "policy.n_action_steps": 4,
        "data.episodes": 60, "policy.eval.episodes": 4, **overrides,
    }
    return to_container(compose(["experiment=particle", *(f"{k}={v}" for k, v in values.items())]))


def test_tiny_particle_policy_trains_and_beats_random_targets(tmp_path):
    cfg = particle_config(tmp_path / "run")
    assert cfg["task"] == "policy" and cfg["process"]["prediction"] == "x0"
    torch.manual_seed(0)
    result = policy_train.train_from_config(cfg)
    assert result.step == 300 and (tmp_path / "run" / "expert_data.zarr").is_dir()
    policy = load_policy(tmp_path / "run" / "model.safetensors")  # the trainer's EMA file loads as a policy
    assert policy.env_id == "scidiff/Particle-v0"
    # 300 steps of a 0.1 M-parameter U-Net are not precise enough for the 0.05 goal radius; a 0.1 radius shows
    # the closed loop works. Random targets never visit both goals on these seeds.
    easier = {"goal_radius": 0.1}
    score = summarize(*rollout(policy, "scidiff/Particle-v0", episodes=20, seed=10_000, progress=False,
                               env_kwargs=easier)[:2])["success_rate"]
    random = summarize(*rollout(RandomPolicy(), "scidiff/Particle-v0", episodes=20, seed=10_000, progress=False,
                                env_kwargs=easier)[:2])["success_rate"]
    assert random == 0.0 and score >= 0.15, (score, random)


def test_trained_policy_stores_its_env_and_rollout_defaults_to_it(tmp_path, monkeypatch):
    torch.manual_seed(0)
    policy_train.train_from_config(particle_config(tmp_path / "run", **{"trainer.max_steps": 2, "data.episodes": 6}))
    checkpoint = tmp_path / "run" / "model.safetensors"
    assert load_policy(checkpoint).env_id == "scidiff/Particle-v0"
    monkeypatch.setattr(policy_cli, "default_env", lambda obs_dim: pytest.fail("the stored env was not used"))
    out = tmp_path / "r.json"
    assert main(["policy", "rollout", "--checkpoint", str(checkpoint), "--episodes", "1", "--steps", "1",
                 "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["env"] == "scidiff/Particle-v0"


def test_trained_env_is_the_eval_env_else_the_data_env(tmp_path):
    eval_env = particle_config(tmp_path, **{"policy.eval.env": "scidiff/PushT-v0"})
    assert policy_train.trained_env(eval_env) == "scidiff/PushT-v0"
    assert policy_train.trained_env(particle_config(tmp_path, **{"policy.eval.env": "null"})) == "scidiff/Particle-v0"
    pusht = to_container(compose(["experiment=pusht_keypoints"]))  # human data: only the eval env names it
    assert policy_train.trained_env(pusht) == "scidiff/PushT-keypoints-v0"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: the CPU keypoint recipe's precision
def test_resumed_policy_run_equals_uninterrupted(tmp_path, monkeypatch, precision):
    common = {"trainer.max_steps": 12, "trainer.checkpoint_every": 5, "trainer.eval_every": 6, "data.episodes": 10,
              "data.path": str(tmp_path / "data.zarr"), "trainer.precision": precision}
    monkeypatch.setattr(policy_train, "make_evaluate", lambda cfg, val: lambda policy, step: {})
    torch.manual_seed(0)
    full = policy_train.train_from_config(particle_config(tmp_path / "full", **common))

    def crash(cfg, val):
        def evaluate(policy, step):
            raise RuntimeError("simulated crash")
        return evaluate

    monkeypatch.setattr(policy_train, "make_evaluate", crash)
    torch.manual_seed(0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        policy_train.train_from_config(particle_config(tmp_path / "crash", **common))
    assert load_training_state(tmp_path / "crash" / "checkpoints" / "last.pt")["step"] == 5
    monkeypatch.setattr(policy_train, "make_evaluate", lambda cfg, val: lambda policy, step: {})
    torch.manual_seed(1)  # the resumed run must not depend on the caller's RNG
    resumed = policy_train.train_from_config(particle_config(tmp_path / "crash", **common))
    assert resumed.step == full.step == 12
    for a, b in zip(full.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)


def test_policy_section_rejects_unknown_fields(tmp_path):
    cfg = particle_config(tmp_path)
    cfg["policy"]["horizn"] = 8
    with pytest.raises(ValueError, match="policy: unknown field"):
        policy_train.build_policy(cfg, 10, 2)


def test_eval_samplers_score_the_same_weights_on_the_same_episodes(tmp_path, monkeypatch):
    from scidiff.policy import rollout as rollout_module

    cfg = particle_config(tmp_path / "run", **{"sampler.steps": 2, "policy.eval.episodes": 3,
                                               "+policy.eval.samplers.ddpm3": "{name: ddpm, steps: 3}"})
    calls = []

    def fake_rollout(policy, env, *, episodes, seed, sampler, num_envs, progress):
        calls.append((policy, env, episodes, seed, sampler.name, sampler.steps))
        return sampler, [], None

    monkeypatch.setattr(rollout_module, "rollout", fake_rollout)
    monkeypatch.setattr(rollout_module, "summarize", lambda s, _: {"avg_max_reward": s.steps / 10, "success_rate": 0.5})
    policy = torch.nn.Linear(1, 1)
    assert policy_train.make_evaluate(cfg, [])(policy, 0) == {
        "avg_max_reward": 0.2, "success_rate": 0.5, "ddpm3/avg_max_reward": 0.3, "ddpm3/success_rate": 0.5}
    spec = cfg["policy"]["eval"]
    assert calls == [(policy, spec["env"], 3, spec["seed"], cfg["sampler"]["name"], 2),
                     (policy, spec["env"], 3, spec["seed"], "ddpm", 3)]
    # a section with its own seed scores the same weights on other initial states (e.g. validation seeds)
    calls.clear()
    other = particle_config(tmp_path / "run", **{"sampler.steps": 2, "policy.eval.episodes": 3,
                                                 "+policy.eval.samplers.val": "{name: ddpm, steps: 3, seed: 200000}"})
    assert set(policy_train.make_evaluate(other, [])(policy, 0)) == {
        "avg_max_reward", "success_rate", "val/avg_max_reward", "val/success_rate"}
    assert [c[3] for c in calls] == [spec["seed"], 200000] and calls[1][4:] == ("ddpm", 3)
    # a section with a from_step is scored only at the checkpoints from that step on
    calls.clear()
    late = particle_config(tmp_path / "run", **{"sampler.steps": 2, "policy.eval.episodes": 3,
                                                "+policy.eval.samplers.late": "{name: ddpm, steps: 3, from_step: 20}"})
    evaluate = policy_train.make_evaluate(late, [])
    assert set(evaluate(policy, 19)) == {"avg_max_reward", "success_rate"}
    assert set(evaluate(policy, 20)) == {"avg_max_reward", "success_rate", "late/avg_max_reward", "late/success_rate"}
    assert [c[5] for c in calls] == [2, 2, 3]
    with pytest.raises(ValueError, match="policy.eval.samplers.x.from_step"):
        policy_train.make_evaluate(particle_config(tmp_path / "bad", **{
            "+policy.eval.samplers.x": "{name: ddpm, steps: 3, from_step: -1}"}), [])
    # with an ``every``, only at the multiples of it: the run's own sampler every 30 steps (policy.eval.every), a
    # section every 10 from step 20 (its own); the trainer calls the hook every 10 steps
    calls.clear()
    fine = particle_config(tmp_path / "run", **{"sampler.steps": 2, "policy.eval.episodes": 3, "+policy.eval.every": 30,
                                                "+policy.eval.samplers.fine": "{name: ddpm, steps: 3, from_step: 20, every: 10}"})
    evaluate = policy_train.make_evaluate(fine, [])
    scored = {step: sorted(evaluate(policy, step)) for step in range(10, 70, 10)}
    assert {step for step, keys in scored.items() if "avg_max_reward" in keys} == {30, 60}
    assert {step for step, keys in scored.items() if "fine/avg_max_reward" in keys} == {20, 30, 40, 50, 60}
    assert [c[5] for c in calls] == [3, 2, 3, 3, 3, 2, 3]
    assert policy_train.eval_schedule(fine["policy"]["eval"]) == (0, 30)
    assert policy_train.eval_schedule(fine["policy"]["eval"], "fine/") == (20, 10)
    with pytest.raises(ValueError, match="policy.eval.every must be"):
        policy_train.make_evaluate(particle_config(tmp_path / "bad", **{"+policy.eval.every": "often"}), [])
    bad = particle_config(tmp_path / "bad", **{"+policy.eval.samplers.bad-label": "{name: ddpm, steps: 3}"})
    with pytest.raises(ValueError, match="bad-label"):
        policy_train.make_evaluate(bad, [])
    with pytest.raises(ValueError, match="sampler.steps"):
        policy_train.make_evaluate(particle_config(tmp_path / "bad", **{"+policy.eval.samplers.x": "{name: ddpm}"}), [])


def test_regression_objective_is_one_override(tmp_path):
    cfg = particle_config(tmp_path, **{"policy.objective": "regression"})
    policy = policy_train.build_policy(cfg, 10, 2)
    assert policy.objective == "regression" and policy.unet.horizon == 8


def test_normalizers_fit_on_training_episodes_only(tmp_path):
    cfg = particle_config(tmp_path, **{"trainer.max_steps": 1, "data.episodes": 10})
    result = policy_train.train_from_config(cfg)
    from envs.replay_buffer import ReplayBuffer

    from scidiff.policy import split_datasets

    train_set, val_set = split_datasets(ReplayBuffer.load(tmp_path / "expert_data.zarr"), horizon=8, n_obs_steps=2,
                                        n_action_steps=4, obs_keys=["state"], val_ratio=0.02, max_train_episodes=None)
    rows = train_set.episode_rows()
    np.testing.assert_allclose(result.model.obs_normalizer.hi.numpy(), train_set.obs[rows].max(0))
    assert val_set.episode_mask.sum() == 1 and not (train_set.episode_mask & val_set.episode_mask).any()


def test_data_mirror_is_pushts_symmetry_and_refused_elsewhere(tmp_path):
    from envs.pusht import mirror_recording

    for experiment in ("pusht_chi", "pusht_keypoints", "pusht_image"):
        data = to_container(compose([f"experiment={experiment}"]))["data"]
        assert data["mirror"] is False and policy_train.data_symmetry(data) is None  # recorded data, as Chi et al.
        assert policy_train.data_symmetry({**data, "mirror": True}) is mirror_recording
    cpu_protocol = to_container(compose(["experiment=pusht_chi_cpu"]))["data"]  # the same 90 episodes, mirrored too
    assert cpu_protocol["max_train_episodes"] == 90 and policy_train.data_symmetry(cpu_protocol) is mirror_recording
    cfg = particle_config(tmp_path, **{"+data.mirror": True})
    with pytest.raises(ValueError, match="data.mirror: .*source 'expert'"):
        policy_train.train_from_config(cfg)


def test_own_demonstrations_train_from_a_zarr_path(tmp_path):
    """data.source=zarr reads any replay-buffer zarr (the user's own demonstrations); a wrong path names itself."""
    from envs.collect import collect_episodes

    buffer, _ = collect_episodes("scidiff/Particle-v0", 6, seed=3)
    buffer.save(tmp_path / "my_demos.zarr")
    cfg = particle_config(tmp_path / "run", **{"data.source": "zarr", "data.path": str(tmp_path / "my_demos.zarr"),
                                                "trainer.max_steps": 2})
    assert policy_train.train_from_config(cfg).step == 2
    assert not (tmp_path / "run" / "expert_data.zarr").exists()  # nothing recorded: the user's data was used
    cfg["data"]["path"] = str(tmp_path / "missing.zarr")
    with pytest.raises(FileNotFoundError, match="missing.zarr"):
        policy_train.load_buffer(cfg["data"], tmp_path)
    cfg["data"]["source"] = "hdf5"
    with pytest.raises(ValueError, match="data.source: unknown 'hdf5'"):
        policy_train.load_buffer(cfg["data"], tmp_path)


def test_consistency_student_distils_a_teacher_file_and_acts_in_one_call(tmp_path):
    """objective=consistency: the student starts as the teacher's copy, trains against it and saves as a policy
    whose default sampler is one consistency call; bad teacher settings are named."""
    torch.manual_seed(0)
    policy_train.train_from_config(particle_config(tmp_path / "teacher", **{"trainer.max_steps": 60, "data.episodes": 6}))
    teacher_file = tmp_path / "teacher" / "model.safetensors"
    cfg = particle_config(tmp_path / "student", **{
        "trainer.max_steps": 20, "data.episodes": 6, "+policy.teacher": str(teacher_file), "policy.objective": "consistency",
        "+policy.distill_steps": 4, "sampler": "consistency", "sampler.steps": 4})
    result = policy_train.train_from_config(cfg)
    assert result.step == 20 and result.history[-1]["loss"] > 0
    teacher, student = load_policy(teacher_file), load_policy(tmp_path / "student" / "model.safetensors")
    assert student.objective == "consistency" and student.distill_steps == 4
    assert student.default_sampler().options == {"calls": 1} and student.default_sampler().steps == 4
    assert student.obs_normalizer.state_dict().keys() == teacher.obs_normalizer.state_dict().keys()
    for a, b in zip(student.obs_normalizer.state_dict().values(), teacher.obs_normalizer.state_dict().values()):
        assert torch.equal(a, b)  # the teacher's normalisers, not refitted
    calls = []
    unet = student.unet.forward
    student.unet.forward = lambda *a, **k: calls.append(1) or unet(*a, **k)
    obs = torch.zeros(3, student.n_obs_steps, student.obs_dim)
    assert student.predict_action(obs)["action"].shape == (3, student.n_action_steps, 2) and len(calls) == 1
    student.predict_action(obs, sampler="consistency", steps=2)
    assert len(calls) == 3  # "consistency" with 2 steps = 2 calls on the 4-time distillation grid
    with pytest.raises(ValueError, match="policy.horizon=4 differs from the teacher's 8"):
        policy_train.distillation_student({**cfg["policy"], "horizon": 4})
    with pytest.raises(FileNotFoundError, match="policy.teacher: no file at"):
        policy_train.distillation_student({**cfg["policy"], "teacher": str(tmp_path / "missing.safetensors")})
    with pytest.raises(ValueError, match="a consistency policy trains against a teacher"):
        student.compute_loss({"obs": obs, "action": torch.zeros(3, student.horizon, 2)})


def test_a_smaller_student_starts_from_its_own_file_and_takes_the_teachers_normalisers(tmp_path):
    """policy.student: the student keeps that file's (smaller) U-Net and weights but the teacher's normalisers and
    grid; a student whose windowing or process differs from the teacher's is refused, naming the setting."""
    from scidiff.policy import DiffusionPolicy, save_policy

    torch.manual_seed(0)
    policy_train.train_from_config(particle_config(tmp_path / "teacher", **{"trainer.max_steps": 2, "data.episodes": 6}))
    teacher_file = tmp_path / "teacher" / "model.safetensors"
    teacher = load_policy(teacher_file)
    config = {**teacher.config(), "down_dims": [8, 16]}
    small = DiffusionPolicy(**config).fit_normalizers(torch.randn(50, teacher.obs_dim), torch.randn(50, 2))
    save_policy(small, tmp_path / "small.safetensors")
    section = {"teacher": str(teacher_file), "student": str(tmp_path / "small.safetensors"), "distill_steps": 4,
               "distill_stride": 2}
    student = policy_train.distillation_student(section)
    assert student.config()["down_dims"] == [8, 16] and student.objective == "consistency"
    assert student.distill_stride == 2 and student.env_id == teacher.env_id
    assert all(torch.equal(a, b) for a, b in zip(student.unet.parameters(), small.unet.parameters()))  # its weights
    for name in ("obs_normalizer", "action_normalizer"):  # the teacher's normalised space, not the file's
        torch.testing.assert_close(getattr(student, name).state_dict(), getattr(teacher, name).state_dict(), rtol=0, atol=0)
    cfg = particle_config(tmp_path / "student", **{
        "trainer.max_steps": 3, "data.episodes": 6, "+policy.teacher": str(teacher_file),
        "+policy.student": str(tmp_path / "small.safetensors"), "policy.objective": "consistency",
        "+policy.distill_steps": 4, "sampler": "consistency", "sampler.steps": 4})
    assert policy_train.train_from_config(cfg).step == 3
    assert load_policy(tmp_path / "student" / "model.safetensors").config()["down_dims"] == [8, 16]
    save_policy(DiffusionPolicy(**{**config, "horizon": 12}), tmp_path / "long.safetensors")
    with pytest.raises(ValueError, match="policy.student .* has horizon=12, the teacher .* 8"):
        policy_train.distillation_student({**section, "student": str(tmp_path / "long.safetensors")})
    with pytest.raises(FileNotFoundError, match="policy.student: no file at"):
        policy_train.distillation_student({**section, "student": str(tmp_path / "missing.safetensors")})
