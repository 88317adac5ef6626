"""Camera policies (Chi et al. 2023): encoder shapes, crops, spatial softmax, image windows, errors, train -> rollout."""

import json

import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the env ids)
from envs.replay_buffer import ReplayBuffer
from scidiff.data import data_path
from scidiff.policy import DiffusionPolicy, PolicyWindowDataset, load_policy, save_policy
from scidiff.policy.rollout import rollout, summarize
from scidiff.policy.vision import ImageEncoder, ResNet18GN, SpatialSoftmax, crop_images

SMALL_VISION = {"width": 8, "crop": 84, "num_keypoints": 8, "feature_dim": 16}


def camera_policy(**kwargs) -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(2, 2, down_dims=[16, 32], step_embed_dim=32, cameras={"img": [96, 96, 3]},
                           vision=SMALL_VISION, **kwargs)


def frames(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3), dtype=np.uint8))


def test_resnet18_trunk_has_resnet18_size_and_stride_32():
    trunk = ResNet18GN(64)
    n_params = sum(p.numel() for p in trunk.parameters())
    # torchvision's resnet18 without fc has 11,176,512 parameters; GroupNorm has the same affine count as BatchNorm.
    assert n_params == 11_176_512
    assert trunk(torch.zeros(2, 3, 84, 84)).shape == (2, 512, 3, 3)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())
    assert all(m.num_channels // m.num_groups == 16 for m in trunk.modules() if isinstance(m, torch.nn.GroupNorm))


def test_encoder_maps_frames_to_features():
    encoder = ImageEncoder(**SMALL_VISION)
    assert encoder(frames(5)).shape == (5, 16)


def test_random_crops_are_windows_of_each_image_and_centre_crop_is_fixed():
    images = frames(64)
    crops = crop_images(images, 84, torch.Generator().manual_seed(0))
    offsets = set()
    for n in range(len(images)):
        found = [(y, x) for y in range(13) for x in range(13) if torch.equal(crops[n], images[n, y : y + 84, x : x + 84])]
        assert found, n
        offsets.add(found[0])
    assert len(offsets) > 20  # an independent offset per image, not one per batch
    again = crop_images(images, 84, torch.Generator().manual_seed(0))
    assert torch.equal(crops, again)  # drawn from the generator: exact resume replays the same augmentation
    assert torch.equal(crop_images(images, 84, random=False), images[:, 6:90, 6:90])
    with pytest.raises(ValueError, match="larger than"):
        crop_images(images, 97)


def test_encoder_crops_at_random_in_training_and_centrally_in_eval():
    encoder = ImageEncoder(**SMALL_VISION)
    x = frames(8)
    encoder.train()
    a = encoder(x, torch.Generator().manual_seed(1))
    b = encoder(x, torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)
    encoder.eval()
    assert torch.equal(encoder(x, torch.Generator().manual_seed(1)), encoder(x, torch.Generator().manual_seed(2)))


def test_spatial_softmax_returns_the_hot_spot_coordinates():
    pool = SpatialSoftmax(1, 1)
    with torch.no_grad():
        pool.keypoints.weight.fill_(1.0)
        pool.keypoints.bias.zero_()
    feature = torch.zeros(1, 1, 5, 7)
    feature[0, 0, 4, 1] = 100.0  # row 4 of 5 -> y = 1, column 1 of 7 -> x = -1 + 2/6
    xy = pool(feature)
    assert torch.allclose(xy, torch.tensor([[-1 + 2 / 6, 1.0]]), atol=1e-4)


def test_camera_policy_predicts_and_round_trips(tmp_path):
    policy = camera_policy().eval()
    obs = torch.randn(3, 2, 2)
    images = {"img": frames(6).reshape(3, 2, 96, 96, 3)}
    out = policy.predict_action(obs, images=images, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (3, 8, 2)
    loaded = load_policy(save_policy(policy, tmp_path / "p.safetensors"))
    assert loaded.cameras == {"img": (96, 96, 3)} and loaded.config()["vision"]["width"] == 8
    again = loaded.predict_action(obs, images=images, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out["action"], again["action"])
    loss = policy.train().compute_loss({"obs": obs, "action": torch.randn(3, 16, 2), "images": images},
                                       torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is not None for p in policy.image_encoders.parameters())


def test_state_policies_have_no_camera_encoder():
    policy = DiffusionPolicy(20, 2, down_dims=[16, 32])
    assert policy.cameras == {} and len(policy.image_encoders) == 0 and policy.config()["vision"] is None


def test_camera_errors_name_the_problem():
    policy = camera_policy().eval()
    obs = torch.randn(1, 2, 2)
    with pytest.raises(ValueError, match="sees camera.*'img'.*no images"):
        policy.predict_action(obs)
    with pytest.raises(ValueError, match="sees camera.*'img'.*\\['wrist'\\]"):
        policy.predict_action(obs, images={"wrist": frames(2).reshape(1, 2, 96, 96, 3)})
    with pytest.raises(ValueError, match="camera 'img': expected frames of shape .*96, 96, 3.*got \\(1, 2, 64, 64, 3\\)"):
        policy.predict_action(obs, images={"img": torch.zeros(1, 2, 64, 64, 3, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="cameras.img: frames are \\(H, W, 3\\)"):
        DiffusionPolicy(2, 2, cameras={"img": [96, 96]})


def test_pixel_env_rejects_a_state_policy_and_a_state_env_rejects_a_camera_policy():
    with pytest.raises(ValueError, match="sees camera.*PushT-pixels"):
        rollout(camera_policy(), "scidiff/PushT-keypoints-v0", episodes=1, progress=False)
    with pytest.raises(ValueError, match="2-d low-dim observations \\['agent_pos'\\], the policy expects 20-d"):
        rollout(DiffusionPolicy(20, 2, down_dims=[16, 32]), "scidiff/PushT-pixels-v0", episodes=1, progress=False)


@pytest.fixture(scope="module")
def pusht_images(tmp_path_factory):
    """A replay-buffer zarr of the first 24 PushT episodes with their recorded frames (uint8)."""
    try:
        source = data_path("pusht/pusht_cchi_v7_replay.zarr")
    except FileNotFoundError as error:
        pytest.skip(f"PushT demonstrations not available: {error}")
    buffer = ReplayBuffer.load(source, keys=["img", "state", "action"], episodes=list(range(24)))
    path = tmp_path_factory.mktemp("pusht") / "pusht_images.zarr"
    ReplayBuffer({**buffer.data, "img": buffer.data["img"].astype(np.uint8)}, buffer.episode_ends).save(path)
    return path, buffer


def test_image_windows_are_the_recorded_frames(pusht_images):
    _, buffer = pusht_images
    dataset = PolicyWindowDataset(buffer, obs_keys=["state[:2]"], camera_keys=["img"])
    assert dataset.images["img"].dtype == np.uint8  # the float32 store is rounded once, a quarter of the memory
    batch = dataset.get_batch([0, 57, 300])
    assert batch["images"]["img"].shape == (3, 2, 96, 96, 3) and batch["images"]["img"].dtype == torch.uint8
    start, length, offset = dataset.table[57]
    row = start + min(max(offset + 1, 0), length - 1)  # the second observation step of window 57
    assert np.array_equal(batch["images"]["img"][1, 1].numpy(), np.rint(buffer.data["img"][row]).astype(np.uint8))
    assert np.allclose(batch["obs"][1, 1].numpy(), buffer.data["state"][row, :2])
    with pytest.raises(ValueError, match="camera 'state': expected frames of shape \\(T, H, W, 3\\)"):
        PolicyWindowDataset(buffer, obs_keys=["state[:2]"], camera_keys=["state"])


@pytest.mark.slow  # ~3 min on 2 busy cores; the default suite scores the bundled image policy instead
def test_short_image_training_beats_a_random_policy_in_the_pixel_env(tmp_path, pusht_images):
    from scidiff.cli import main

    path, _ = pusht_images
    out = tmp_path / "run"
    assert main(["train", "experiment=pusht_image", "data.source=zarr", f"data.path={path}",
                 "data.max_train_episodes=null", f"trainer.out_dir={out}", "trainer.max_steps=600",
                 "trainer.eval_every=0", "trainer.checkpoint_every=600", "trainer.warmup_steps=50",
                 "trainer.progress=false", "trainer.tensorboard=false", "trainer.lr=1e-3"]) == 0
    policy = load_policy(out / "model.safetensors")
    assert policy.env_id == "scidiff/PushT-pixels-v0"
    trained = summarize(*rollout(policy, policy.env_id, episodes=10, seed=100000, num_envs=10, progress=False)[:2])

    class RandomPolicy(torch.nn.Module):
        obs_dim, action_dim, n_obs_steps, n_action_steps, cameras = 2, 2, 2, 8, {"img": (96, 96, 3)}

        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))
            self.rng = np.random.default_rng(0)

        def predict_action(self, obs, images=None, **_):
            assert images["img"].shape[1:] == (2, 96, 96, 3)
            return {"action": torch.from_numpy(self.rng.uniform(0, 512, (len(obs), 8, 2)))}

    random = summarize(*rollout(RandomPolicy(), "scidiff/PushT-pixels-v0", episodes=10, seed=100000, num_envs=10,
                                progress=False)[:2])
    print(json.dumps({"trained": trained["avg_max_coverage"], "random": random["avg_max_coverage"]}))
    assert trained["avg_max_coverage"] > random["avg_max_coverage"] + 0.1, (trained, random)


def test_a_lerobot_dataset_trains_a_camera_policy_that_runs_in_the_pixel_env(tmp_path, pusht_images):
    from envs.lerobot_dataset import export_lerobot
    from scidiff.cli import main

    _, buffer = pusht_images
    dataset = export_lerobot(ReplayBuffer.load(pusht_images[0], episodes=list(range(6))), tmp_path / "pusht_lerobot")
    out = tmp_path / "run"
    assert main(["train", "experiment=pusht_image", "data.source=lerobot", f"data.path={dataset}",
                 "data.obs_keys=[observation.state]", "data.camera_keys=[observation.image]",
                 "data.max_train_episodes=null", f"trainer.out_dir={out}", "trainer.max_steps=4",
                 "trainer.eval_every=0", "trainer.checkpoint_every=4", "trainer.progress=false",
                 "trainer.tensorboard=false", "trainer.batch_size=8", "model.down_dims=[16,32]",
                 "policy.vision.width=8"]) == 0
    policy = load_policy(out / "model.safetensors")
    assert policy.cameras == {"observation.image": (96, 96, 3)} and policy.obs_dim == 2
    results, _, _ = rollout(policy, "scidiff/PushT-pixels-v0", episodes=1, max_steps=16, progress=False)
    assert results[0].steps == 16


def test_bundled_image_policy_is_the_pixel_env_default_and_pushes_the_t(tmp_path, capsys):
    from scidiff.cli import main
    from scidiff.core.checkpoint import load_inference
    from scidiff.policy.cli import BUNDLED_IMAGE_WEIGHTS, PIXELS_ENV

    policy = load_policy(BUNDLED_IMAGE_WEIGHTS)
    assert policy.cameras == {"img": (96, 96, 3)} and policy.env_id == PIXELS_ENV and policy.obs_dim == 2
    assert BUNDLED_IMAGE_WEIGHTS.stat().st_size < 20e6
    run_config = load_inference(BUNDLED_IMAGE_WEIGHTS)[1]
    # Stage 2 of the README's recipe: warm-started from the 90-episode weights, trained on all episodes.
    assert run_config["data"]["max_train_episodes"] is None and run_config["trainer"]["init_weights"]
    assert run_config["policy"]["vision"]["width"] == 16
    # The CLI picks the image policy for the pixels env; 6 full episodes of Chi et al.'s test seeds.
    assert main(["policy", "rollout", "--env", PIXELS_ENV, "--episodes", "6", "--num-envs", "6", "--no-progress",
                 "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["checkpoint"] == str(BUNDLED_IMAGE_WEIGHTS)
    # A random policy scores about 0.06 on these seeds (test above); the bundled one must clearly push the T.
    assert summary["avg_max_coverage"] > 0.4, summary["avg_max_coverage"]


def test_a_camera_policy_distils_into_a_one_call_consistency_student(tmp_path, pusht_images):
    from scidiff.cli import main

    path, buffer = pusht_images
    teacher = camera_policy(env_id="scidiff/PushT-pixels-v0")
    dataset = PolicyWindowDataset(buffer, obs_keys=["state[:2]"], camera_keys=["img"])
    rows = dataset.episode_rows()
    teacher.fit_normalizers(dataset.obs[rows], dataset.action[rows])
    teacher_path = save_policy(teacher, tmp_path / "teacher.safetensors")
    out = tmp_path / "student"
    assert main(["train", "experiment=pusht_image_consistency", f"policy.teacher={teacher_path}", "data.source=zarr",
                 f"data.path={path}", f"trainer.out_dir={out}", "trainer.max_steps=3", "trainer.eval_every=0",
                 "trainer.checkpoint_every=3", "trainer.progress=false", "trainer.tensorboard=false",
                 "trainer.batch_size=4"]) == 0
    student = load_policy(out / "model.safetensors")
    assert student.objective == "consistency" and student.cameras == teacher.cameras
    images = {"img": frames(2).reshape(1, 2, 96, 96, 3)}
    out = student.predict_action(torch.randn(1, 2, 2), images=images, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (1, 8, 2) and student.default_sampler().options == {"calls": 1}
