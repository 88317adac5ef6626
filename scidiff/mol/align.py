"""Rigid alignment of coordinate sets without reflections (Kabsch 1976), numpy only: the refinement pairs (build) and
conformer matching (torsion) share it."""

from __future__ import annotations

import numpy as np

__all__ = ["kabsch", "superpose", "aligned_rmsd"]


def kabsch(P: np.ndarray, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising |P R^T + t - Q|^2 over proper rotations (Kabsch 1976)."""
    p, q = P.mean(axis=0), Q.mean(axis=0)
    u, _, vt = np.linalg.svd((P - p).T @ (Q - q))
    d = 1.0 if np.linalg.det(vt.T @ u.T) >= 0 else -1.0  # never a reflection: it would invert every stereocentre
    R = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return R, q - p @ R.T


def superpose(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """P rigidly moved onto Q (Kabsch 1976)."""
    R, t = kabsch(P, Q)
    return P @ R.T + t


def aligned_rmsd(P: np.ndarray, Q: np.ndarray) -> float:
    """RMSD between P and Q after superposing P onto Q (Kabsch 1976)."""
    return float(np.sqrt(np.mean(np.sum((superpose(P, Q) - Q) ** 2, axis=1))))
