"""Torsion score head on the e3nn conformer backbone: one parity-odd scalar per rotatable bond (Jing et al. 2022,
Torsional Diffusion, their pseudotorque readout).

For each rotatable bond (i, j) a bond-centred tensor product gathers the backbone's atom features h_k of the atoms k
of the molecule within ``cutoff`` of the bond centre c = (x_i + x_j) / 2, with the edge geometry Y(x_k - c) coupled to
the bond axis Y_2(x_j - x_i) (l = 2: even in the axis, so the output does not depend on which end is i); the 0o
(pseudoscalar) channels pooled per bond pass through an odd MLP. The result is invariant under rotations and
translations and changes sign when the geometry and the chirality tags are mirrored together, as the score of a
dihedral angle must (a reflection negates every dihedral). With the tags held fixed a mirrored geometry is the other
enantiomer, and the head answers differently, which is what makes it chirality-aware.

The head's output is the score in units of its typical size: Jing et al. 2022 scale it by sqrt(score_norm(sigma)),
the weighting of ``scidiff.core.torus_score_loss`` (``torsion_score`` does both).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from scidiff.core.torus import score_norm

from .denoiser import ConformerDenoiser, DenoiserConfig, _mlp, cosine_envelope, gaussian_smearing

__all__ = ["TorsionScoreHead", "backbone_features", "bond_neighbourhoods", "torsion_score", "TorsionScoreModel",
           "build_torsion_model"]

HEAD_FIELDS = ("head_scalars", "head_cutoff")  # the model section's fields that are the head's, not the backbone's


def backbone_features(backbone: ConformerDenoiser, x: Tensor, t: Tensor, graph: Data) -> Tensor:
    """The backbone's last hidden atom features (N, backbone.irreps_hidden): the input of its 1o head, read with a
    forward hook so that the backbone's forward stays the one implementation of them."""
    captured: list[Tensor] = []
    handle = backbone.head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        backbone(x, t, graph)
    finally:
        handle.remove()
    return captured[0]


def bond_neighbourhoods(x: Tensor, batch: Tensor, bonds: Tensor, bond_batch: Tensor,
                        cutoff: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """(bond, atom) pairs of the same molecule with the atom within ``cutoff`` of the bond centre (all atoms of the
    molecule for None), their vectors atom - centre, and cosine-envelope weights (1 without a cutoff)."""
    bond_of, atom = torch.nonzero(bond_batch[:, None] == batch[None, :], as_tuple=True)
    centre = 0.5 * (x[bonds[0]] + x[bonds[1]])
    vec = x[atom] - centre[bond_of]
    if cutoff is None:
        return torch.stack([bond_of, atom]), vec, torch.ones(vec.shape[0], dtype=x.dtype, device=x.device)
    dist = vec.norm(dim=-1)
    inside = dist < cutoff
    return torch.stack([bond_of[inside], atom[inside]]), vec[inside], cosine_envelope(dist[inside], cutoff)


class TorsionScoreHead(nn.Module):
    """Per rotatable bond, a pseudoscalar from a bond-centred tensor product over the backbone's atom features."""

    def __init__(self, backbone: ConformerDenoiser, num_scalars: int | None = None, cutoff: float | None = 5.0):
        super().__init__()
        config = backbone.config
        self.backbone, self.cutoff = backbone, cutoff
        self.num_rbf, self.rbf_max = config.num_rbf, config.rbf_max
        self.num_backbone_scalars = s_in = config.num_scalars  # the 0e channels lead the backbone's irreps
        s = self.num_scalars = num_scalars or config.num_scalars
        self.irreps_sh = o3.Irreps.spherical_harmonics(config.sh_lmax)
        # Edge geometry Y(x_k - c) coupled to the bond axis Y_2(x_j - x_i): Jing et al.'s final_tp_tor.
        self.axis_tp = o3.FullTensorProduct(self.irreps_sh, "2e")
        self.tp = o3.FullyConnectedTensorProduct(backbone.irreps_hidden, self.axis_tp.irreps_out, f"{s}x0o + {s}x0e",
                                                 shared_weights=False)
        self.fc = _mlp([config.num_rbf + 2 * s_in, config.edge_dim, self.tp.weight_numel])
        # Odd in the 0o channels (no biases, tanh) and gated by the 0e ones: the output keeps parity -1.
        self.odd_in = nn.Linear(s, s, bias=False)
        self.gate = nn.Linear(s, s)
        self.odd_out = nn.Linear(s, 1, bias=False)

    def forward(self, x: Tensor, t: Tensor, graph: Data, bonds: Tensor, bond_batch: Tensor | None = None) -> Tensor:
        """Scores (T,) of the rotatable bonds ``bonds`` (2, T) (atom indices into x) at coordinates x (N, 3), network
        time t (per atom or scalar), for ``graph`` (featurize, or a Batch); ``bond_batch`` (T,) is each bond's molecule."""
        batch = graph.batch if getattr(graph, "batch", None) is not None else torch.zeros(
            x.shape[0], dtype=torch.long, device=x.device)
        bond_batch = batch[bonds[0]] if bond_batch is None else bond_batch
        h = backbone_features(self.backbone, x, t, graph)
        (bond_of, atom), vec, weight = bond_neighbourhoods(x, batch, bonds, bond_batch, self.cutoff)
        axis_sh = o3.spherical_harmonics("2e", x[bonds[1]] - x[bonds[0]], normalize=True, normalization="component")
        edge_sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        geometry = self.axis_tp(edge_sh, axis_sh[bond_of])
        scalars = h[:, : self.num_backbone_scalars]
        bond_scalars = scalars[bonds[0]] + scalars[bonds[1]]  # symmetric in i, j
        rbf = gaussian_smearing(vec.norm(dim=-1), self.num_rbf, self.rbf_max)
        weights = self.fc(torch.cat([rbf, scalars[atom], bond_scalars[bond_of]], dim=-1))
        messages = self.tp(h[atom], geometry, weights) * weight[:, None]
        num_bonds = bonds.shape[1]
        norm = scatter(weight, bond_of, dim=0, dim_size=num_bonds, reduce="sum").clamp_min(1.0).sqrt()
        pooled = scatter(messages, bond_of, dim=0, dim_size=num_bonds, reduce="sum") / norm[:, None]
        odd, even = pooled[:, : self.num_scalars], pooled[:, self.num_scalars:]
        return self.odd_out(torch.tanh(self.odd_in(odd)) * torch.sigmoid(self.gate(even))).squeeze(-1)


def torsion_score(head: TorsionScoreHead, x: Tensor, t: Tensor, graph: Data, bonds: Tensor, sigma: Tensor,
                  bond_batch: Tensor | None = None) -> Tensor:
    """The head's output times sqrt(score_norm(sigma)) per bond (sigma (T,)): a score of the torsion angles at the
    scale of the wrapped-normal score (Jing et al. 2022), for ``score_denoiser`` and ``torus_score_loss``."""
    out = head(x, t, graph, bonds, bond_batch)
    return out * score_norm(sigma.to(torch.float64)).sqrt().to(out.dtype)


class TorsionScoreModel(nn.Module):
    """The e3nn conformer backbone with a torsion score head: ``forward(x, t, graph, bonds, bond_batch)`` -> (T,)."""

    def __init__(self, backbone: DenoiserConfig | None = None, head_scalars: int | None = None,
                 head_cutoff: float | None = 5.0):
        super().__init__()
        self.backbone_config, self.head_scalars, self.head_cutoff = backbone or DenoiserConfig(), head_scalars, head_cutoff
        self.head = TorsionScoreHead(ConformerDenoiser(self.backbone_config), head_scalars, head_cutoff)

    def forward(self, x: Tensor, t: Tensor, graph: Data, bonds: Tensor, bond_batch: Tensor | None = None) -> Tensor:
        return self.head(x, t, graph, bonds, bond_batch)

    def __deepcopy__(self, memo: dict) -> "TorsionScoreModel":
        """A rebuilt copy with the same weights (e3nn's generated modules do not deep-copy cleanly; see the backbone)."""
        reference = next(self.parameters())
        clone = type(self)(self.backbone_config, self.head_scalars, self.head_cutoff).to(
            device=reference.device, dtype=reference.dtype)
        clone.load_state_dict(self.state_dict())
        clone.train(self.training)
        memo[id(self)] = clone
        return clone


def build_torsion_model(model_cfg: dict) -> TorsionScoreModel:
    """The model of a ``model`` section: DenoiserConfig fields for the backbone plus head_scalars, head_cutoff."""
    fields = {k: v for k, v in model_cfg.items() if k != "name" and k not in HEAD_FIELDS}
    try:
        backbone = DenoiserConfig(**fields)
    except TypeError as exc:
        raise ValueError(f"model: {exc}") from None
    return TorsionScoreModel(backbone, model_cfg.get("head_scalars"), model_cfg.get("head_cutoff", 5.0))
