"""Camera observation encoder of Diffusion Policy (Chi et al. 2023): ResNet-18 with GroupNorm, spatial-softmax keypoints.

Chi et al. train the vision encoder end to end from scratch with two changes to torchvision's ResNet-18: every
BatchNorm becomes a GroupNorm of 16 channels per group (BatchNorm's running statistics interact badly with the EMA
of the weights), and the global average pool becomes a spatial softmax that returns the expected image coordinates
of learned keypoints (Levine et al. 2016, as in robomimic and LeRobot). Images are randomly cropped in training
(84 of 96 pixels for PushT, one crop per image) and centre-cropped at inference.

``width`` scales every stage (64 = ResNet-18's 64/128/256/512 channels, 11.2 M parameters; 16 = a narrow variant
that one CPU thread trains, 0.7 M). The backbone is written here (a few lines) rather than taken from torchvision,
which would pin a second torch-versioned package for no pretrained weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["VISION_DEFAULTS", "crop_images", "SpatialSoftmax", "ResNet18GN", "ImageEncoder"]

# Chi et al.'s PushT image encoder: ResNet-18 (width 64), 84 x 84 crops, 32 keypoints, 64 features per camera.
VISION_DEFAULTS = {"width": 64, "crop": 84, "num_keypoints": 32, "feature_dim": 64}


def crop_images(images: Tensor, size: int, generator: torch.Generator | None = None, random: bool = True) -> Tensor:
    """Square crops (N, size, size, C) of (N, H, W, C) images: an independent random offset per image, else the centre.

    Cropping gathers rows and columns from the stored uint8 frames, so augmentation never copies the dataset.
    """
    n, h, w = images.shape[:3]
    if size > h or size > w:
        raise ValueError(f"crop {size} is larger than the {h} x {w} images")
    if random:
        draw = generator.device if generator is not None else "cpu"  # randint draws on the generator's device
        offset = [torch.randint(0, limit + 1, (n, 1), generator=generator, device=draw).to(images.device)
                  for limit in (h - size, w - size)]
    else:
        offset = [torch.full((n, 1), limit // 2, device=images.device) for limit in (h - size, w - size)]
    span = torch.arange(size, device=images.device)
    rows, cols = offset[0] + span, offset[1] + span  # (N, size) each
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


class SpatialSoftmax(nn.Module):
    """Expected (x, y) in [-1, 1] of each of K learned keypoint maps over a feature map (Levine et al. 2016)."""

    def __init__(self, channels: int, num_keypoints: int):
        super().__init__()
        self.keypoints = nn.Conv2d(channels, num_keypoints, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        maps = self.keypoints(features)  # (N, K, h, w)
        n, k, h, w = maps.shape
        attention = maps.flatten(2).softmax(dim=-1)  # (N, K, h*w)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=maps.device, dtype=maps.dtype),
                                torch.linspace(-1, 1, w, device=maps.device, dtype=maps.dtype), indexing="ij")
        grid = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)  # (h*w, 2)
        return (attention @ grid).reshape(n, 2 * k)


def _group_norm(channels: int) -> nn.GroupNorm:
    """Chi et al.'s replace_bn_with_gn: 16 channels per group."""
    return nn.GroupNorm(max(1, channels // 16), channels)


class _BasicBlock(nn.Module):
    """ResNet's two-conv residual block (He et al. 2016) with GroupNorm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), _group_norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNet18GN(nn.Module):
    """ResNet-18's convolutional trunk (He et al. 2016) with GroupNorm; (N, 3, H, W) -> (N, 8 * width, H/32, W/32)."""

    def __init__(self, width: int = 64, in_channels: int = 3):
        super().__init__()
        self.out_channels = 8 * width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), _group_norm(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if i == 0 else 2
            stages += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.stem(x))


class ImageEncoder(nn.Module):
    """uint8 (N, H, W, 3) frames -> (N, feature_dim): crop, ResNet-18-GN, spatial softmax, linear + ReLU (Chi et al. 2023)."""

    def __init__(self, width: int = 64, crop: int = 84, num_keypoints: int = 32, feature_dim: int = 64):
        super().__init__()
        self.crop, self.feature_dim = int(crop), int(feature_dim)
        self.backbone = ResNet18GN(int(width))
        self.pool = SpatialSoftmax(self.backbone.out_channels, int(num_keypoints))
        self.head = nn.Sequential(nn.Linear(2 * int(num_keypoints), self.feature_dim), nn.ReLU())

    def forward(self, frames: Tensor, generator: torch.Generator | None = None) -> Tensor:
        # Random crops while training (augmentation), the centre crop in eval mode (inference, EMA evaluation).
        crops = crop_images(frames, self.crop, generator, random=self.training)
        x = crops.permute(0, 3, 1, 2).to(self.head[0].weight.dtype) / 255.0  # Chi et al.: RGB scaled to [0, 1]
        return self.head(self.pool(self.backbone(x)))
