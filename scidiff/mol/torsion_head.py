"""Torsion score head on the e3nn conformer backbone: one parity-odd scalar per rotatable bond (Jing et al. 2022,
Torsional Diffusion, their pseudotorque readout).

For each rotatable bond (i, j) a bond-centred tensor product gathers the backbone's atom features h_k of the atoms k
of the molecule within ``cutoff`` of the bond centre c = (x_i + x_j) / 2, with the edge geometry Y(x_k - c) coupled to
the bond axis Y_2(x_j - x_i) (l = 2: even in the axis, so the output does not depend on which end is i); the 0o
(pseudoscalar) channels pooled per bond pass through an odd MLP. The result is invariant under rotations and
translations and changes sign when the geometry and the chirality tags are mirrored together, as the score of a
dihedral angle must (a reflection negates every dihedral). With the tags held fixed a mirrored geometry is the other
enantiomer, and the head answers differently, which is what makes it chirality-aware.

With ``harmonics`` > 0 the head adds a torsion Fourier term, the derivative of a force field's torsion energy
sum_n V_n cos(n phi) (MMFF94's form): over every dihedral (a, i, j, b) of the bond, a and b any neighbours of i and j,
sum_n c_n sin(n phi) with coefficients c_n from the backbone's invariant (0e) features of a, i, j, b. Turning the bond
shifts each of these dihedrals by the same angle, so the term is a score of the bond's torsion; sin is odd, so it keeps
the head's parity, and the reversed dihedral (b, j, i, a) has the same angle and, symmetrised, the same coefficients.
It gives the network the periodic preferences of each bond type directly, which the tensor-product readout must
otherwise find from the geometry. With ``prior_harmonics`` > 0 ``torsion_score`` adds ``TorsionPrior``'s exact score
of a torsion library learnt from the graph alone (measured against both: the README's torsional section).

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
from .featurize import NODE_DIM

__all__ = ["TorsionPrior", "TorsionScoreHead", "backbone_features", "bond_neighbourhoods", "bond_dihedrals",
           "dihedral_angles", "torsion_score", "TorsionScoreModel", "build_torsion_model"]

# the model section's fields that are the head's, not the backbone's
HEAD_FIELDS = ("head_scalars", "head_cutoff", "head_harmonics", "head_prior")


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


def bond_dihedrals(graph: Data, bonds: Tensor) -> tuple[Tensor, Tensor]:
    """Every dihedral (a, i, j, b) of the bonds (i, j) = ``bonds`` (2, T): a a bonded neighbour of i other than j, b
    one of j other than i, from the graph's 1-hop edges. Returns the bond of each (Q,) and the quadruples (4, Q)."""
    bonded = graph.edge_attr[:, 0] > 0.5  # the first edge feature is the 1-hop one-hot (featurize)
    src, dst = graph.edge_index[:, bonded]
    # (bond, edge) pairs: the edge's source is a neighbour of i (left) or of j (right), the bond itself left out
    left_bond, left_edge = torch.nonzero((dst[None] == bonds[0][:, None]) & (src[None] != bonds[1][:, None]),
                                         as_tuple=True)
    right_bond, right_edge = torch.nonzero((dst[None] == bonds[1][:, None]) & (src[None] != bonds[0][:, None]),
                                           as_tuple=True)
    left, right = torch.nonzero(left_bond[:, None] == right_bond[None], as_tuple=True)
    bond_of = left_bond[left]
    quads = torch.stack([src[left_edge[left]], bonds[0][bond_of], bonds[1][bond_of], src[right_edge[right]]])
    return bond_of, quads


def dihedral_angles(x: Tensor, quads: Tensor) -> Tensor:
    """Dihedrals of quadruples (4, Q) at coordinates x (N, 3) with ``torsion.dihedral``'s sign (IUPAC, as RDKit), in
    torch so that the head runs on the model's device (numpy's ``torsion.dihedral`` is the data side's)."""
    b1, b2, b3 = (x[quads[k + 1]] - x[quads[k]] for k in range(3))
    n1, n2 = torch.linalg.cross(b1, b2), torch.linalg.cross(b2, b3)
    return torch.atan2(b2.norm(dim=-1) * (b1 * n2).sum(-1), (n1 * n2).sum(-1))


def _dihedral_coefficients(mlp: nn.Module, features: Tensor, quads: Tensor) -> Tensor:
    """Per dihedral (a, i, j, b) of quads (4, Q), mlp of its four atoms' features, summed over both directions: the
    reversed dihedral (b, j, i, a) is the same angle, so it must get the same coefficients."""
    a, i, j, b = quads
    return (mlp(torch.cat([features[a], features[i], features[j], features[b]], dim=-1))
            + mlp(torch.cat([features[b], features[j], features[i], features[a]], dim=-1)))


class TorsionPrior(nn.Module):
    """A torsion prior per bond from the molecular graph alone, and its exact score under wrapped-normal noise.

    The density of a bond's torsion tau is p(tau) = 1 + sum over the bond's dihedrals q = (a, i, j, b) and n of
    a_qn cos(n phi_q), phi_q = tau + const; a_qn from the atoms' graph features (no geometry, so it is a torsion library
    learnt from the data, as ETKDG's are from crystal structures). Noise of width sigma damps harmonic n by
    exp(-n^2 sigma^2 / 2), so the noised density, and its score d/dtau log p_sigma, are exact for this model at every
    sigma: the network does not have to learn how the prior fades with the noise. sum |a_qn| <= 0.95 keeps p > 0."""

    def __init__(self, node_dim: int, hidden: int, harmonics: int):
        super().__init__()
        self.harmonics = harmonics
        self.mlp = _mlp([4 * node_dim, hidden, harmonics])
        self.gain = nn.Parameter(torch.zeros(()))  # starts as the uniform prior (zero score)

    def forward(self, x: Tensor, graph: Data, bonds: Tensor, sigma: Tensor) -> Tensor:
        """The prior's score (T,) of each bond's torsion at coordinates x, noise sigma (T,)."""
        bond_of, quads = bond_dihedrals(graph, bonds)
        coef = self.gain * _dihedral_coefficients(self.mlp, graph.x.to(x.dtype), quads)
        num_bonds = bonds.shape[1]
        total = scatter(coef.abs().sum(-1), bond_of, dim=0, dim_size=num_bonds, reduce="sum")
        coef = coef / (total / 0.95).clamp_min(1.0)[bond_of, None]
        n = torch.arange(1, self.harmonics + 1, dtype=x.dtype, device=x.device)
        damped = coef * torch.exp(-0.5 * n**2 * sigma.to(x.dtype)[bond_of, None] ** 2)
        phi = dihedral_angles(x, quads)[:, None] * n
        density = 1 + scatter((damped * torch.cos(phi)).sum(-1), bond_of, dim=0, dim_size=num_bonds, reduce="sum")
        slope = -scatter((n * damped * torch.sin(phi)).sum(-1), bond_of, dim=0, dim_size=num_bonds, reduce="sum")
        return slope / density


class TorsionScoreHead(nn.Module):
    """Per rotatable bond, a pseudoscalar from a bond-centred tensor product over the backbone's atom features."""

    def __init__(self, backbone: ConformerDenoiser, num_scalars: int | None = None, cutoff: float | None = 5.0,
                 harmonics: int = 0, prior_harmonics: int = 0):
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
        # Torsion Fourier term: c_1..c_harmonics per dihedral from the invariant features of its four atoms.
        self.harmonics = harmonics
        self.fourier = _mlp([4 * s_in, config.edge_dim, harmonics]) if harmonics > 0 else None
        # Starts at zero: the readout's loss is ~1 at initialisation, and a unit-size random term would add ~3 to it.
        self.fourier_gain = nn.Parameter(torch.zeros(())) if harmonics > 0 else None
        self.prior = TorsionPrior(NODE_DIM, config.edge_dim, prior_harmonics) if prior_harmonics > 0 else None

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
        out = self.odd_out(torch.tanh(self.odd_in(odd)) * torch.sigmoid(self.gate(even))).squeeze(-1)
        if self.fourier is not None:
            out = out + self.fourier_term(x, graph, bonds, scalars)
        return out

    def fourier_term(self, x: Tensor, graph: Data, bonds: Tensor, scalars: Tensor) -> Tensor:
        """sum over the bond's dihedrals of sum_n c_n sin(n phi), over sqrt(their number) (T,)."""
        bond_of, quads = bond_dihedrals(graph, bonds)
        coefficients = _dihedral_coefficients(self.fourier, scalars, quads)
        n = torch.arange(1, self.harmonics + 1, dtype=x.dtype, device=x.device)
        per_dihedral = (coefficients * torch.sin(dihedral_angles(x, quads)[:, None] * n)).sum(-1)
        num_bonds = bonds.shape[1]
        count = torch.bincount(bond_of, minlength=num_bonds).clamp_min(1).to(x.dtype)
        pooled = scatter(per_dihedral, bond_of, dim=0, dim_size=num_bonds, reduce="sum")
        return self.fourier_gain * pooled / count.sqrt()


def torsion_score(head: TorsionScoreHead, x: Tensor, t: Tensor, graph: Data, bonds: Tensor, sigma: Tensor,
                  bond_batch: Tensor | None = None) -> Tensor:
    """The head's output times sqrt(score_norm(sigma)) per bond (sigma (T,)): a score of the torsion angles at the
    scale of the wrapped-normal score (Jing et al. 2022), for ``score_denoiser`` and ``torus_score_loss``; plus the
    head's ``TorsionPrior`` score, already in score units, when it has one."""
    out = head(x, t, graph, bonds, bond_batch)
    score = out * score_norm(sigma.to(torch.float64)).sqrt().to(out.dtype)
    prior = getattr(head, "prior", None)  # TorsionScoreHead and TorsionScoreModel have one; other score nets none
    return score if prior is None else score + prior(x, graph, bonds, sigma)


class TorsionScoreModel(nn.Module):
    """The e3nn conformer backbone with a torsion score head: ``forward(x, t, graph, bonds, bond_batch)`` -> (T,)."""

    def __init__(self, backbone: DenoiserConfig | None = None, head_scalars: int | None = None,
                 head_cutoff: float | None = 5.0, head_harmonics: int = 0, head_prior: int = 0):
        super().__init__()
        self.backbone_config, self.head_scalars, self.head_cutoff = backbone or DenoiserConfig(), head_scalars, head_cutoff
        self.head_harmonics, self.head_prior = head_harmonics, head_prior
        self.head = TorsionScoreHead(ConformerDenoiser(self.backbone_config), head_scalars, head_cutoff, head_harmonics,
                                     head_prior)

    def forward(self, x: Tensor, t: Tensor, graph: Data, bonds: Tensor, bond_batch: Tensor | None = None) -> Tensor:
        return self.head(x, t, graph, bonds, bond_batch)

    @property
    def prior(self) -> "TorsionPrior | None":
        return self.head.prior

    def __deepcopy__(self, memo: dict) -> "TorsionScoreModel":
        """A rebuilt copy with the same weights (e3nn's generated modules do not deep-copy cleanly; see the backbone)."""
        reference = next(self.parameters())
        clone = type(self)(self.backbone_config, self.head_scalars, self.head_cutoff, self.head_harmonics,
                           self.head_prior).to(
            device=reference.device, dtype=reference.dtype)
        clone.load_state_dict(self.state_dict())
        clone.train(self.training)
        memo[id(self)] = clone
        return clone


def build_torsion_model(model_cfg: dict) -> TorsionScoreModel:
    """The model of a ``model`` section: DenoiserConfig fields for the backbone plus head_scalars, head_cutoff,
    head_harmonics (0: no torsion Fourier term) and head_prior (0: no TorsionPrior); runs saved before these existed
    have neither."""
    fields = {k: v for k, v in model_cfg.items() if k != "name" and k not in HEAD_FIELDS}
    try:
        backbone = DenoiserConfig(**fields)
    except TypeError as exc:
        raise ValueError(f"model: {exc}") from None
    counts = {name: model_cfg.get(name, 0) for name in ("head_harmonics", "head_prior")}
    for name, value in counts.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"model.{name}: expected an integer >= 0, got {value!r}")
    return TorsionScoreModel(backbone, model_cfg.get("head_scalars"), model_cfg.get("head_cutoff", 5.0),
                             counts["head_harmonics"], counts["head_prior"])
