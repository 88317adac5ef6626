"""scidiff: scientific diffusion models (3D conformers, robot policies) on one shared diffusion core."""

from .data import data_path, data_root

__version__ = "0.1.0"
__all__ = ["data_root", "data_path", "__version__"]
