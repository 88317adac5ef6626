"""Diffusion policies (Chi et al. 2023): action-chunk U-Net, normalisers, replay-buffer windows, the policy.

Training is ``scidiff train experiment=pusht_keypoints|pusht_state|particle`` (scidiff.policy.train); closed-loop
evaluation is ``scidiff policy rollout`` (scidiff.policy.rollout, scidiff.policy.cli). Those modules import
gymnasium and the envs package, so they are not imported here.
"""

from .datasets import (
    PUSHT_KEYPOINT_OBS,
    PUSHT_STATE_OBS,
    PolicyWindowDataset,
    episode_split,
    parse_obs_key,
    split_datasets,
    step_features,
    window_rows,
    window_table,
)
from .normalizer import MinMaxNormalizer, minmax_affine
from .policy import CHI_PROCESS, OBJECTIVES, DiffusionPolicy, load_policy, save_policy, shift_plan
from .unet1d import ConditionalUnet1D, check_horizon

__all__ = [
    "PUSHT_KEYPOINT_OBS", "PUSHT_STATE_OBS", "PolicyWindowDataset", "episode_split", "parse_obs_key",
    "split_datasets", "step_features", "window_rows", "window_table", "MinMaxNormalizer", "minmax_affine",
    "CHI_PROCESS", "OBJECTIVES", "DiffusionPolicy", "load_policy", "save_policy", "shift_plan", "ConditionalUnet1D",
    "check_horizon",
]
