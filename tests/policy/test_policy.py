"""DiffusionPolicy (Chi et al. 2023) and its regression sibling: shapes, executed slice, save/load, a tiny overfit."""

import json

import pytest
import torch

from scidiff.core import SamplerSpec
from scidiff.core.checkpoint import load_inference, save_inference
from scidiff.policy import DiffusionPolicy, load_policy, save_policy
from scidiff.policy.policy import POLICY_CONFIG_KEY

To, Tp, Ta, OBS, ACT = 2, 8, 4, 3, 2
SMALL = dict(horizon=Tp, n_obs_steps=To, n_action_steps=Ta, down_dims=[32, 64], step_embed_dim=32)


def toy_batch(n: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Action chunks that ramp from the last observed position with an observed slope."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(n, To, OBS, generator=g) * 10
    k = torch.arange(Tp, dtype=torch.float32)[None, :, None]
    return {"obs": obs, "action": obs[:, -1:, :2] + 0.3 * k * obs[:, -1:, 2:3]}


def make_policy(objective: str = "diffusion", seed: int = 0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    batch = toy_batch()
    return DiffusionPolicy(OBS, ACT, objective=objective, **SMALL).fit_normalizers(batch["obs"], batch["action"])


@pytest.mark.parametrize("objective", ["diffusion", "regression"])
def test_predict_action_shapes_and_executed_slice(objective):
    policy = make_policy(objective)
    out = policy.predict_action(toy_batch(5)["obs"], steps=3, generator=torch.Generator().manual_seed(0))
    assert out["action_pred"].shape == (5, Tp, ACT) and out["action"].shape == (5, Ta, ACT)
    # Chi et al. execute predictions To-1 .. To-1+Ta-1: the first is aligned with the latest observation.
    torch.testing.assert_close(out["action"], out["action_pred"][:, To - 1 : To - 1 + Ta])


def test_samples_stay_inside_the_normalised_box():
    policy = make_policy()
    out = policy.predict_action(toy_batch(4)["obs"], sampler="ddpm", steps=5, generator=torch.Generator().manual_seed(0))
    lo, hi = policy.action_normalizer.lo, policy.action_normalizer.hi
    assert (out["action_pred"] >= lo - 1e-4).all() and (out["action_pred"] <= hi + 1e-4).all()


def test_bad_arguments_raise_clear_errors():
    policy = make_policy()
    with pytest.raises(ValueError, match=r"obs_history must have shape \(batch, n_obs_steps=2, obs_dim=3\)"):
        policy.predict_action(torch.zeros(1, 3, OBS))
    with pytest.raises(ValueError, match="unknown sampler"):
        policy.predict_action(torch.zeros(1, To, OBS), sampler="nope")
    with pytest.raises(ValueError, match="objective"):
        DiffusionPolicy(OBS, ACT, objective="gan", **SMALL)
    with pytest.raises(ValueError, match="inside the predicted horizon of 8"):
        DiffusionPolicy(OBS, ACT, **{**SMALL, "n_action_steps": 8})
    with pytest.raises(ValueError, match="horizon 7 does not fit 2 levels: it must be divisible by 2"):
        DiffusionPolicy(OBS, ACT, **{**SMALL, "horizon": 7})
    with pytest.raises(ValueError, match="prediction"):
        DiffusionPolicy(OBS, ACT, process={"name": "flow", "prediction": "epsilon"}, **SMALL)
    with pytest.raises(ValueError, match=r"action must have shape \(batch, horizon=8, action_dim=2\)"):
        policy.compute_loss({"obs": torch.zeros(1, To, OBS), "action": torch.zeros(1, Tp, 3)})


def test_other_core_processes_plug_in():
    batch = toy_batch(4)
    policy = DiffusionPolicy(OBS, ACT, process={"name": "flow", "prediction": "velocity"}, **SMALL)
    policy.fit_normalizers(batch["obs"], batch["action"])
    assert torch.isfinite(policy.compute_loss(batch, generator=torch.Generator().manual_seed(0)))
    out = policy.predict_action(batch["obs"], sampler="euler", steps=2, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (4, Ta, ACT)


@pytest.mark.parametrize("objective", ["diffusion", "regression"])
def test_save_load_round_trip_gives_identical_predictions(tmp_path, objective):
    policy = make_policy(objective)
    path = save_policy(policy, tmp_path / "sub" / "policy.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["policy.safetensors"]  # no temp file left behind
    loaded = load_policy(path)
    assert loaded.config() == policy.config() and json.loads(json.dumps(policy.config())) == policy.config()
    obs = toy_batch(3, seed=1)["obs"]
    a = policy.predict_action(obs, steps=4, generator=torch.Generator().manual_seed(7))
    b = loaded.predict_action(obs, steps=4, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a["action_pred"], b["action_pred"], rtol=0, atol=0)
    torch.testing.assert_close(loaded.action_normalizer.hi, policy.action_normalizer.hi)


def test_half_file_stores_float16_parameters_and_float32_normalisers(tmp_path):
    policy = make_policy()
    policy.action_normalizer.hi.fill_(511.3)  # a pixel-scale range float16 would round (to 511.5)
    full = save_policy(policy, tmp_path / "full.safetensors")
    half = save_policy(policy, tmp_path / "half.safetensors", half=True)
    state, config = load_inference(half)
    params = {name for name, _ in policy.named_parameters()}
    assert config["parameters_dtype"] == "float16" and params
    assert all(state[k].dtype == (torch.float16 if k in params else policy.state_dict()[k].dtype) for k in state)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = load_policy(half)  # cast back to float32: the rounded parameters, the exact normalisers
    for name, p in loaded.named_parameters():
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, dict(policy.named_parameters())[name].detach().half().float(), rtol=0, atol=0)
    assert loaded.action_normalizer.hi.eq(511.3).all()
    obs = toy_batch(3, seed=1)["obs"]
    a = policy.predict_action(obs, steps=4, generator=torch.Generator().manual_seed(7))["action_pred"]
    b = loaded.predict_action(obs, steps=4, generator=torch.Generator().manual_seed(7))["action_pred"]
    assert 0 < (a - b).abs().max() < 1e-3 * 511.3  # rounded: close to the full-precision plan, not identical


def test_load_rejects_files_without_config(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="not a scidiff inference file"):
        load_policy(tmp_path / "x.safetensors")
    save_inference(tmp_path / "toy.safetensors", {"w": torch.zeros(1)}, {"model": {}})
    with pytest.raises(ValueError, match="not of a policy"):
        load_policy(tmp_path / "toy.safetensors")


def test_policy_files_record_their_task_and_files_of_other_tasks_are_refused(tmp_path):
    policy = make_policy()
    path = save_policy(policy, tmp_path / "policy.safetensors", run_config={"task": "toy", "note": "n"})
    assert load_inference(path)[1]["task"] == "policy"  # save_policy's own task wins over a copied run config
    state, config = load_inference(path)
    save_inference(tmp_path / "mol.safetensors", state, {**config, "task": "mol"})
    with pytest.raises(ValueError, match="holds weights of task 'mol', not 'policy'"):
        load_policy(tmp_path / "mol.safetensors")
    # save_policy files written before the task was recorded carry only the policy config, and still load.
    save_inference(tmp_path / "old.safetensors", state, {POLICY_CONFIG_KEY: config[POLICY_CONFIG_KEY]})
    assert load_policy(tmp_path / "old.safetensors").config() == policy.config()


def test_env_id_round_trips_through_the_file(tmp_path):
    policy = DiffusionPolicy(OBS, ACT, env_id="scidiff/Particle-v0", **SMALL)
    assert load_policy(save_policy(policy, tmp_path / "p.safetensors")).env_id == "scidiff/Particle-v0"
    assert make_policy().env_id is None


def test_a_sampler_spec_samples_like_its_name_and_steps():
    policy, obs = make_policy(), toy_batch(3)["obs"]
    by_spec = policy.predict_action(obs, SamplerSpec("heun", 3, {"churn": 0.5}), generator=torch.Generator().manual_seed(2))
    by_name = policy.predict_action(obs, sampler="heun", steps=3, churn=0.5, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(by_spec["action_pred"], by_name["action_pred"], rtol=0, atol=0)


def test_default_process_is_chi_recipe():
    policy = make_policy()
    assert policy.process.num_steps == 100 and policy.diffusion.prediction == "epsilon"
    with pytest.raises(ValueError, match="process.name"):
        DiffusionPolicy(OBS, ACT, process={"name": "sde"}, **SMALL)


@pytest.mark.parametrize("objective, drop", [("diffusion", 0.5), ("regression", 0.05)])
def test_loss_goes_down_on_a_toy_dataset(objective, drop):
    policy, batch = make_policy(objective), toy_batch()
    opt = torch.optim.Adam(policy.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(100):
        loss = policy.compute_loss(batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < drop * first, (first, last)
    if objective == "regression":
        # The deterministic baseline must now reproduce the demonstrations in data units (actions span ~0-25).
        pred = policy.predict_action(batch["obs"])["action_pred"]
        torch.testing.assert_close(pred, batch["action"], rtol=0, atol=0.5)


class EpsilonOracle(torch.nn.Module):
    """The exact epsilon for data concentrated on one normalised chunk per batch row (that row's conditioning picks it)."""

    def __init__(self, process, chunks):
        super().__init__()
        self.process, self.chunks, self.conds = process, chunks, []

    def forward(self, x, t, global_cond=None):
        self.conds.append(global_cond)
        tt = t.to(torch.float64)
        alpha, sigma = (v.reshape(-1, 1, 1) for v in self.process.alpha_sigma(tt))
        return ((x.double() - alpha * self.chunks.double()) / sigma).float()


@pytest.mark.parametrize("sampler, steps", [("ddim", 10), ("ddpm", 20), ("dpmpp_2m", 5)])
def test_oracle_network_recovers_the_demonstrated_chunk(sampler, steps):
    # With the exact epsilon, sampling must return the target chunk in data units: this checks the wiring of
    # normalisation, conditioning, sampler, clipping and unnormalisation end to end.
    policy, batch = make_policy(), toy_batch(4)
    policy.unet = EpsilonOracle(policy.process, policy.action_normalizer(batch["action"]))
    out = policy.predict_action(batch["obs"], sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out["action_pred"], batch["action"], rtol=0, atol=1e-3)
    expected_cond = policy.obs_normalizer(batch["obs"]).reshape(4, To * OBS)
    torch.testing.assert_close(policy.unet.conds[0], expected_cond)
