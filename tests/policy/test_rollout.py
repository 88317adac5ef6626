"""Receding-horizon rollouts (Chi et al. 2023): vector-env bookkeeping, the JSON summary, the gym-pusht adapter, errors."""

import json

import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the env ids)
from envs.particle import GOAL_A, GOAL_B, VISITED
from envs.pusht import PushTEnv
from scidiff.cli import main
from scidiff.policy import DiffusionPolicy, save_policy
from scidiff.policy.rollout import PushTKeypointsAdapter, gym_pusht_keypoint_obs, rollout, summarize


class NearestGoalPolicy(torch.nn.Module):
    """A scripted stand-in with the policy interface: every action targets the nearest unvisited goal."""

    obs_dim, action_dim, n_obs_steps, n_action_steps = 10, 2, 2, 8

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # rollout reads the device from the parameters
        self.calls = 0

    def predict_action(self, obs, sampler="ddim", steps=10, generator=None):
        self.calls += 1
        o = obs[:, -1].numpy()
        goals = np.stack([o[:, GOAL_A], o[:, GOAL_B]], 1)
        dist = np.linalg.norm(goals - o[:, None, :2], axis=-1) + 10 * o[:, VISITED]
        target = goals[np.arange(len(o)), dist.argmin(1)]
        return {"action": torch.from_numpy(np.repeat(target[:, None], self.n_action_steps, 1))}


def test_vector_rollout_reads_success_at_the_terminating_step():
    # Success terminates a particle episode; after it the vector env autoresets, which must not erase the success.
    policy = NearestGoalPolicy()
    results, latencies, _ = rollout(policy, "scidiff/Particle-v0", episodes=7, seed=5, num_envs=3, progress=False)
    assert [r.seed for r in results] == list(range(5, 12))
    assert all(r.success and r.max_reward == 1.0 for r in results)
    assert all(1 <= r.steps < 50 for r in results) and len(latencies) == policy.calls


def test_action_steps_replans_after_that_many_actions(tmp_path, capsys):
    """--action-steps N executes the first N of each chunk's Ta actions, then replans: with N = Ta / 2 an episode of
    fixed length takes twice the chunks; N outside [1, Ta] is refused, naming the option or the policy's Ta."""
    policy = tiny_policy(obs_dim=20)  # Ta = 4
    chunks = {}
    for n in (4, 2):
        _, latencies, _ = rollout(policy, "scidiff/PushT-keypoints-v0", episodes=1, steps=1, max_steps=16,
                                  progress=False, action_steps=n)
        chunks[n] = len(latencies)
    assert chunks == {4: 4, 2: 8}
    with pytest.raises(ValueError, match=r"action_steps must be in \[1, the policy's n_action_steps=4\], got 5"):
        rollout(policy, "scidiff/PushT-keypoints-v0", episodes=1, progress=False, action_steps=5)
    path = save_policy(policy, tmp_path / "p.safetensors")
    assert main(["policy", "rollout", "--checkpoint", str(path), "--action-steps", "0", "--episodes", "1"]) == 2
    assert "--action-steps must be an integer >= 1, got 0" in capsys.readouterr().err


def test_random_targets_rarely_succeed():
    """Random targets almost never visit both goals: the bar a trained policy must clear (see test_train.py)."""
    summary = summarize(*rollout(RandomPolicy(), "scidiff/Particle-v0", episodes=20, seed=0, progress=False)[:2])
    assert summary["success_rate"] <= 0.1


class RandomPolicy(NearestGoalPolicy):
    """Uniform random targets in the unit square."""

    def predict_action(self, obs, sampler="ddim", steps=10, generator=None):
        return {"action": torch.rand(obs.shape[0], self.n_action_steps, 2, generator=torch.Generator().manual_seed(self.calls))}


def tiny_policy(obs_dim=10):
    torch.manual_seed(0)
    policy = DiffusionPolicy(obs_dim, 2, horizon=8, n_obs_steps=2, n_action_steps=4, down_dims=[16, 32], step_embed_dim=16)
    return policy.fit_normalizers(torch.rand(64, obs_dim), torch.rand(64, 2))


def test_rollout_cli_writes_summary_json_and_video(tmp_path, capsys, monkeypatch):
    import envs.video

    written_fps, write_video = [], envs.video.write_video
    monkeypatch.setattr(envs.video, "write_video", lambda *a, fps: written_fps.append(fps) or write_video(*a, fps=fps))
    path = save_policy(tiny_policy(), tmp_path / "p.safetensors")
    out = tmp_path / "r.json"
    code = main(["policy", "rollout", "--checkpoint", str(path), "--env", "scidiff/Particle-v0", "--episodes", "3",
                 "--seed", "7", "--steps", "2", "--num-envs", "2", "--json", str(out), "--video", str(tmp_path / "v.gif"),
                 "--video-episodes", "2", "--no-progress"])
    assert code == 0
    summary = json.loads(out.read_text())
    for key in ("episodes", "avg_max_reward", "success_rate", "mean_chunk_latency_ms", "per_episode", "sampler", "steps",
                "seed", "env", "checkpoint"):
        assert key in summary, key
    assert summary["episodes"] == 3 and summary["sampler"] == "ddim" and summary["steps"] == 2
    assert [e["seed"] for e in summary["per_episode"]] == [7, 8, 9]
    assert (tmp_path / "v.gif").stat().st_size > 0 and written_fps == [20]  # the particle env's render_fps
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["episodes"] == 3


def test_noise_seed_seeds_the_sampler_noise(tmp_path, monkeypatch):
    """--noise-seed reaches the rollout as the seed of the sampler's generator and is recorded; the same seed repeats
    the episodes exactly (a 50-episode score's sampling noise is measured by changing it)."""
    import scidiff.policy.rollout as rollout_module

    seeds, real = [], rollout_module.rollout
    monkeypatch.setattr(rollout_module, "rollout", lambda *a, **kw: seeds.append(kw["generator_seed"]) or real(*a, **kw))
    path = save_policy(tiny_policy(obs_dim=20), tmp_path / "p.safetensors")

    def run(noise_seed):
        out = tmp_path / f"r{noise_seed}.json"
        assert main(["policy", "rollout", "--checkpoint", str(path), "--env", "scidiff/PushT-keypoints-v0",
                     "--episodes", "2", "--max-steps", "16", "--steps", "2", "--noise-seed", str(noise_seed),
                     "--json", str(out), "--no-progress"]) == 0
        return json.loads(out.read_text())

    first, again = run(3), run(3)
    assert seeds == [3, 3] and first["noise_seed"] == 3
    assert first["per_episode"] == again["per_episode"]


def test_pusht_summary_reports_average_max_coverage(tmp_path):
    policy = tiny_policy(obs_dim=20)
    results, latencies, _ = rollout(policy, "scidiff/PushT-keypoints-v0", episodes=2, steps=1, max_steps=16,
                                    progress=False)
    summary = summarize(results, latencies)
    # Chi et al.'s score: the mean over episodes of each episode's max reward clip(coverage / 0.95, 0, 1).
    assert summary["avg_max_coverage"] == pytest.approx(np.mean([r.max_reward for r in results]))
    assert all(r.max_reward == pytest.approx(min(r.max_coverage / 0.95, 1.0)) for r in results)
    assert all(r.steps == 16 for r in results)


def test_clear_errors_for_missing_checkpoint_and_mismatched_env(tmp_path, capsys):
    missing = tmp_path / "nope.safetensors"
    assert main(["policy", "rollout", "--checkpoint", str(missing), "--episodes", "1"]) == 2
    assert str(missing) in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"observations of shape \(10,\), the policy expects \(20,\)"):
        rollout(tiny_policy(obs_dim=20), "scidiff/Particle-v0", episodes=1, progress=False)


@pytest.mark.parametrize("seed", [0, 3, 100000])
def test_gym_pusht_adapter_matches_the_envs_own_keypoints(seed):
    env = PushTEnv(obs_type="keypoints")
    obs, _ = env.reset(seed=seed)
    for _ in range(3):  # move so the block angle is not the reset one, and wraps differently than the body angle
        obs, *_ = env.step(env.state[2:4])
    np.testing.assert_allclose(gym_pusht_keypoint_obs(env.state), obs, atol=1e-9)
    wrapped = PushTKeypointsAdapter(PushTEnv(obs_type="state"))
    kp_obs, _ = wrapped.reset(seed=seed)
    np.testing.assert_allclose(kp_obs, PushTEnv(obs_type="keypoints").reset(seed=seed)[0], atol=1e-9)
    assert wrapped.observation_space.shape == (20,)


def test_video_fps_is_the_envs_render_fps():
    from scidiff.policy.cli import video_fps

    assert video_fps("scidiff/PushT-keypoints-v0") == PushTEnv.metadata["render_fps"] == 10
    assert video_fps("scidiff/Particle-v0") == 20


def test_bundled_pusht_weights_load_with_chi_horizons_and_provenance():
    from scidiff.policy import load_policy
    from scidiff.policy.cli import BUNDLED_WEIGHTS, default_env
    from scidiff.core.checkpoint import load_inference

    policy = load_policy(BUNDLED_WEIGHTS)
    assert (policy.obs_dim, policy.action_dim) == (20, 2) and default_env(policy.obs_dim) == "scidiff/PushT-keypoints-v0"
    assert policy.env_id == "scidiff/PushT-keypoints-v0"
    assert (policy.horizon, policy.n_obs_steps, policy.n_action_steps) == (16, 2, 8)
    state, run_config = load_inference(BUNDLED_WEIGHTS)
    # experiment=pusht_keypoints_wide: all human episodes except the validation split (Chi et al.'s protocol caps
    # training at 90), exported with float16 parameters and float32 normalisers.
    assert run_config["data"]["max_train_episodes"] is None and run_config["trainer"]["max_steps"] == 8000
    assert run_config["model"]["down_dims"] == [64, 128, 256] and run_config["parameters_dtype"] == "float16"
    assert state["action_normalizer.lo"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in policy.parameters())


def test_bundled_student_is_distilled_from_the_bundled_policy():
    """The bundled consistency student names the bundled policy as its teacher, acts in its normalised space, and its
    one call lands near the teacher's DDIM-10 plan from the same noise (far nearer than the teacher's own DDIM-1)."""
    import gymnasium as gym
    from scidiff.core.checkpoint import load_inference
    from scidiff.policy import load_policy
    from scidiff.policy.cli import BUNDLED_WEIGHTS

    student_path = BUNDLED_WEIGHTS.with_name("pusht_keypoints_consistency.safetensors")
    teacher, student = load_policy(BUNDLED_WEIGHTS), load_policy(student_path)
    _, run_config = load_inference(student_path)
    assert run_config["policy"]["teacher"] == "scidiff/policy/weights/pusht_keypoints.safetensors"
    assert student.objective == "consistency" and (student.distill_steps, student.distill_stride) == (10, 5)
    assert student.config()["down_dims"] == [32, 64, 128] and student.config()["process"] == teacher.config()["process"]
    for name in ("obs_normalizer", "action_normalizer"):
        torch.testing.assert_close(getattr(student, name).state_dict(), getattr(teacher, name).state_dict(), rtol=0, atol=0)
    env = gym.make("scidiff/PushT-keypoints-v0")
    obs = torch.tensor(np.array([np.stack([env.reset(seed=s)[0]] * 2) for s in range(32)]), dtype=torch.float32)

    def plan_error(policy, sampler, steps):  # mean distance (pixels) from the teacher's DDIM-10 plan, same noise
        plan = policy.predict_action(obs, sampler, steps, generator=torch.Generator().manual_seed(0))["action_pred"]
        return float((plan - reference).norm(dim=-1).mean())

    reference = teacher.predict_action(obs, "ddim", 10, generator=torch.Generator().manual_seed(0))["action_pred"]
    student_error, ddim1_error = plan_error(student, "consistency", 1), plan_error(teacher, "ddim", 1)
    assert student_error < ddim1_error / 3, (student_error, ddim1_error)


def test_a_warm_started_student_takes_one_call_at_a_time_it_learnt():
    """--warm-start T with a consistency student: one network call at T, which must be a time it was distilled at
    (the bundled student, stride 5 on the DDIM-10 grid, learnt t = 90 and 40); anything else is refused up front."""
    from scidiff.policy import load_policy, shift_plan
    from scidiff.policy.cli import BUNDLED_WEIGHTS

    student = load_policy(BUNDLED_WEIGHTS.with_name("pusht_keypoints_consistency.safetensors"))
    assert student.learned_times() == [90.0, 40.0]
    times = []
    student.unet.register_forward_pre_hook(lambda module, args: times.append(args[1].unique().tolist()))
    obs = torch.zeros(3, student.n_obs_steps, student.obs_dim)
    plan = student.predict_action(obs, "consistency", 2)["action_pred"]
    student.predict_action(obs, "consistency", 1, warm_start=shift_plan(plan, student.n_action_steps), t_start=40.0)
    assert times == [[90.0], [40.0], [40.0]]
    with pytest.raises(ValueError, match=r"1 call at a time it learnt, \[90.0, 40.0\].*got t_start=20.0, 1 call"):
        student.predict_action(obs, "consistency", 1, warm_start=plan, t_start=20.0)
    with pytest.raises(ValueError, match=r"got t_start=40.0, 2 call"):  # the 2nd call would be at an unlearnt time
        rollout(student, "scidiff/PushT-keypoints-v0", episodes=1, sampler="consistency", steps=2, warm_start=40.0)
    assert len(times) == 3  # refused before any chunk was sampled
