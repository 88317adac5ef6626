"""Chi et al.'s PushT protocol as configured: the episode split is theirs, evaluation on their test seeds."""

import json

import numpy as np
import pytest

from scidiff.core.config import compose, to_container
from scidiff.policy.datasets import episode_split


def chi_split(n_episodes: int, val_ratio: float, max_n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """get_val_mask then downsample_mask, as in diffusion_policy/common/sampler.py (Chi et al. 2023)."""
    val = np.zeros(n_episodes, dtype=bool)
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    val[np.random.default_rng(seed=seed).choice(n_episodes, size=n_val, replace=False)] = True
    train = ~val
    idx = np.nonzero(train)[0]
    keep = idx[np.random.default_rng(seed=seed).choice(len(idx), size=max_n, replace=False)]
    train = np.zeros_like(train)
    train[keep] = True
    return train, val


@pytest.mark.parametrize("experiment", ["pusht_chi", "pusht_chi_cpu"])
def test_protocol_split_seeds_and_recipe_are_chi_et_al(experiment):
    cfg = to_container(compose([f"experiment={experiment}"]))
    data = cfg["data"]
    assert (data["val_ratio"], data["max_train_episodes"], data["split_seed"]) == (0.02, 90, 42)
    train, val = episode_split(206, data["val_ratio"], data["max_train_episodes"], data["split_seed"])
    want_train, want_val = chi_split(206, 0.02, 90, 42)
    np.testing.assert_array_equal(train, want_train)
    np.testing.assert_array_equal(val, want_val)
    assert train.sum() == 90 and val.sum() == 4 and not (train & val).any()
    evaluation = {"env": "scidiff/PushT-keypoints-v0", "episodes": 50, "seed": 100000}
    if experiment == "pusht_chi_cpu":  # Chi et al.'s stochastic DDPM at a tenth of the steps, the 4.6 M U-Net
        assert cfg["sampler"] == {"name": "ddpm", "steps": 10}
        assert cfg["model"]["down_dims"] == [64, 128, 256] and cfg["trainer"]["precision"] == "bf16"
        assert cfg["trainer"]["max_steps"] // cfg["trainer"]["eval_every"] == 20  # a best and a mean of the last 10
    else:
        assert cfg["sampler"] == {"name": "ddpm", "steps": 100}
        assert cfg["model"]["down_dims"] == [256, 512, 1024]
    assert cfg["policy"]["eval"] == evaluation
    t = cfg["trainer"]
    assert (t["lr"], t["betas"], t["weight_decay"], t["warmup_steps"], t["batch_size"]) == (1e-4, [0.95, 0.999], 1e-6, 500, 256)
    assert (t["ema_power"], t["ema_max_decay"], t["grad_clip"]) == (0.75, 0.9999, 0.0)
    process = cfg["process"]
    assert (process["name"], process["schedule"], process["num_steps"], process["prediction"]) == ("vp", "cosine", 100, "epsilon")
    assert (cfg["policy"]["horizon"], cfg["policy"]["n_obs_steps"], cfg["policy"]["n_action_steps"]) == (16, 2, 8)


def protocol_benchmark():
    """benchmarks/policy_chi_protocol.py as a module (benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("chi", Path(__file__).parents[2] / "benchmarks/policy_chi_protocol.py")
    chi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chi)
    return chi


def test_protocol_scores_best_and_last_ten():
    chi = protocol_benchmark()
    evals = [{"step": 100 * i, "eval/avg_max_reward": s, "eval/success_rate": 0.5} for i, s in
             enumerate([0.2, 0.9, 0.5] + [0.7] * 10)]
    r = chi.protocol_scores(evals)
    assert (r["best"], r["best_step"], r["evaluations"]) == (0.9, 100, 13)
    assert r["last_mean"] == pytest.approx(0.7)
    with pytest.raises(ValueError, match="no closed-loop evaluation"):
        chi.protocol_scores([])
    # a second sampler logged at some evaluations (policy.eval.samplers) is scored on those alone
    for i, e in enumerate(evals[1:]):
        e["eval/ddpm10/avg_max_reward"], e["eval/ddpm10/success_rate"] = 0.8 + i / 100, 0.25
    assert chi.sampler_labels(evals) == ["", "ddpm10/"]
    r = chi.protocol_scores(evals, label="ddpm10/")
    assert (r["best"], r["best_step"], r["evaluations"], r["best_success"]) == (0.91, 1200, 12, 0.25)
    assert r["last_mean"] == pytest.approx(0.8 + sum(range(2, 12)) / 1000)
    with pytest.raises(ValueError, match="with dpm"):
        chi.protocol_scores(evals, label="dpm/")
    # a checkpoint chosen on other seeds (a sampler section with its own seed) is reported with its test score
    r = chi.chosen_on(evals, "ddpm10/")
    assert (r["step"], r["score"], r["success"]) == (1200, 0.7, 0.5)
    with pytest.raises(ValueError, match="'dpm'"):
        chi.chosen_on(evals, "dpm/")


def test_evaluations_keep_the_steps_only_a_second_sampler_scored(tmp_path):
    # DDPM-10 every 300 steps (policy.eval.every), DDPM-100 every 60 from 480 (a section's every and from_step)
    chi, records = protocol_benchmark(), []
    for step in range(60, 660, 60):
        records.append({"step": step, "loss": 0.1, "steps_per_s": 2.0})
        scores = {"eval/val_loss": 0.03}  # one record per evaluation, as the training loop logs it
        if step % 300 == 0:
            scores.update({"eval/avg_max_reward": 0.5, "eval/success_rate": 0.0})
        if step >= 480:
            scores.update({"eval/ddpm100/avg_max_reward": step / 1000, "eval/ddpm100/success_rate": 0.0})
        records.append({"step": step, **scores})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    evals = chi.evaluations(tmp_path)
    assert [e["step"] for e in evals] == [300, 480, 540, 600]
    assert chi.protocol_scores(evals)["evaluations"] == 2
    r = chi.protocol_scores(evals, label="ddpm100/")
    assert (r["evaluations"], r["best_step"]) == (3, 600) and r["last_mean"] == pytest.approx(0.54)
    assert [row[0] for row in chi.curve(tmp_path)] == [300, 600]


def test_eval_seeds_are_read_from_the_run_config(tmp_path):
    chi = protocol_benchmark()
    (tmp_path / "config.yaml").write_text(
        "policy:\n  eval:\n    episodes: 50\n    seed: 100000\n    samplers:\n"
        "      ddpm10: {name: ddpm, steps: 10}\n      valseeds: {name: ddpm, steps: 10, seed: 200000}\n")
    assert chi.eval_seeds(tmp_path) == chi.eval_seeds(tmp_path, "ddpm10/") == "100000-100049"
    assert chi.eval_seeds(tmp_path, "valseeds/") == "200000-200049"
