"""Environments and demonstration data for robot policies: PushT (Chi et al. 2023), a multimodal particle task
(after IBC, Florence et al. 2021), scripted experts, the replay-buffer zarr format and episode videos.

Importing the package registers the Gymnasium ids (Gymnasium 1.x has no plugin entry points); re-importing or
calling register_envs() again is harmless:

- ``scidiff/PushT-v0``: 5-d state [agent_xy, block_xy, block_angle], 300 steps
- ``scidiff/PushT-keypoints-v0``: 9 block keypoints + agent position (20-d), 300 steps
- ``scidiff/PushT-pixels-v0``: {"pixels": 96x96x3 uint8, "agent_pos": 2-d}, 300 steps
- ``scidiff/Particle-v0``: visit two goals in either order, 50 steps (IBC's episode length)
"""

from __future__ import annotations

import gymnasium

from .experts import ParticleExpert, make_expert
from .particle import ParticleEnv
from .pusht import PushTEnv
from .replay_buffer import ReplayBuffer

__all__ = ["ENV_IDS", "register_envs", "PushTEnv", "ParticleEnv", "ParticleExpert", "make_expert", "ReplayBuffer"]

# id -> (entry point, episode step limit, constructor kwargs)
_SPECS = {
    "scidiff/PushT-v0": ("envs.pusht:PushTEnv", 300, {"obs_type": "state"}),
    "scidiff/PushT-keypoints-v0": ("envs.pusht:PushTEnv", 300, {"obs_type": "keypoints"}),
    "scidiff/PushT-pixels-v0": ("envs.pusht:PushTEnv", 300, {"obs_type": "pixels_agent_pos"}),
    "scidiff/Particle-v0": ("envs.particle:ParticleEnv", 50, {}),
}
ENV_IDS = tuple(_SPECS)


def register_envs() -> None:
    """Register the scidiff Gymnasium ids that are not registered yet."""
    for env_id, (entry_point, max_steps, kwargs) in _SPECS.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps, kwargs=kwargs)


register_envs()
