"""Videos: rollouts and replays render frames, grids tile episodes, MP4 and GIF files read back."""

from __future__ import annotations

import gymnasium as gym
import imageio.v3 as iio
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.episode import play_episode
from envs.experts import ParticleExpert
from envs.video import replay_frames, rollout_frames, tile_episodes, write_video


def test_rollout_and_replay_frames():
    env = gym.make("scidiff/Particle-v0", render_mode="rgb_array", render_size=64)
    expert = ParticleExpert(seed=0)
    expert.reset()
    frames = rollout_frames(env, expert, seed=3)
    assert len(frames) == 35 and frames[0].shape == (64, 64, 3)  # 34 steps, as recorded before the shared loop
    pusht = gym.make("scidiff/PushT-v0", render_mode="rgb_array", render_size=80)
    replayed = replay_frames(pusht, [[200.0, 200.0]] * 4, options={"reset_to_state": [100.0, 100.0, 300.0, 300.0, 0.5]})
    assert len(replayed) == 5 and replayed[-1].shape == (80, 80, 3)
    assert not np.array_equal(replayed[0], replayed[-1]), "the agent moves between frames"
    with pytest.raises(ValueError, match="rgb_array"):
        rollout_frames(gym.make("scidiff/Particle-v0"), expert)


def test_episode_loop_records_observations_actions_and_stops_at_max_steps():
    env, expert = gym.make("scidiff/Particle-v0"), ParticleExpert()
    expert.reset(seed=3)
    full = play_episode(env, expert, seed=3)
    assert full.terminated and full.info["is_success"] and full.frames == []
    assert len(full.observations) == len(full.actions) + 1 == 35
    expert.reset(seed=3)
    short = play_episode(env, expert, seed=3, max_steps=5)
    assert len(short.actions) == 5 and not short.terminated
    np.testing.assert_array_equal(np.stack(short.observations), np.stack(full.observations[:6]))
    assert play_episode(env, expert, seed=3, max_steps=0).actions == []


def test_tile_pads_short_episodes_with_their_last_frame():
    short = [np.full((10, 12, 3), 50, np.uint8)] * 2
    long = [np.full((10, 12, 3), v, np.uint8) for v in (100, 110, 120)]
    grid = tile_episodes([short, long, long], ncols=2, gap=2)
    assert len(grid) == 3 and grid[0].shape == (22, 26, 3)
    assert grid[2][0, 0, 0] == 50 and grid[2][0, 14, 0] == 120 and grid[2][12, 0, 0] == 120
    assert grid[2][21, 25, 0] == 255, "the empty fourth cell stays white"


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_write_video_round_trip(tmp_path, suffix):
    frames = [np.full((33, 47, 3), 20 * i, np.uint8) for i in range(6)]
    path = write_video(frames, tmp_path / f"clip{suffix}", fps=5)
    back = iio.imread(path)
    assert back.shape[0] == 6 and back.shape[1:3] in {(33, 47), (34, 48)}
    assert abs(float(back[3][4:28, 4:40].mean()) - 60.0) < 3.0
    with pytest.raises(ValueError, match="mp4 or .gif"):
        write_video(frames, tmp_path / "clip.avi")
