"""E(3)-equivariant, chirality-aware denoiser for atom coordinates: e3nn tensor-product message passing.

Design (Thomas et al. 2018, Tensor Field Networks; Geiger & Smidt 2022, e3nn; Jing et al. 2022, Torsional
Diffusion; Corso et al. 2023, DiffDock):
- edges: the molecule's bond, 2-hop and 3-hop edges (from the featuriser, always present, so every atom keeps
  its neighbours at any noise level) plus "spatial" edges between all other atom pairs of the same molecule
  closer than ``cutoff`` on the current noisy coordinates (``cutoff=None``: the full graph of each molecule).
  Pairs are enumerated per molecule in plain torch, so torch-cluster is not needed; spatial edges fade out
  with a smooth cosine envelope that also enters the message normaliser, so the output is continuous in the
  coordinates when a pair crosses the cutoff;
- edge weights of each tensor product: an MLP on Gaussian-smeared distance, edge features, the noise-level
  embedding and the scalar features of both endpoints;
- hidden features carry both parities (0e, 0o, 1o, 1e, 2e, 2o) with gated nonlinearities (Weiler et al. 2018)
  and an equivariant RMS norm after every layer;
- chirality enters twice: as a pseudoscalar (0o), the signed tag multiplying invariant node features; and as
  the invariant product of the tag with the normalised signed volume of the centre's rank-ordered neighbours
  on the current coordinates (the (r_ij x r_ik) . r_il triple product), which tells the network directly
  whether the noisy geometry has the tagged handedness. The network is then exactly equivariant under
  rotations, translations and permutations, and under reflections *only when the chirality tags are mirrored
  too*: f(-x, -tau) = -f(x, tau). With the tags held fixed a reflected molecule is a different molecule,
  f(-x, tau) != -f(x, tau), which is what lets it build the right enantiomer; an exactly O(3)-equivariant
  network with parity-even inputs (EGNN, EDM) cannot;
- the output is a per-atom 1o vector with its per-molecule mean removed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from scidiff.core.nn import sinusoidal_embedding

from .featurize import EDGE_DIM, NODE_DIM, remove_mean

__all__ = ["DenoiserConfig", "ConformerDenoiser", "build_model", "TensorProductConv", "EquivariantRMSNorm",
           "molecule_edges", "all_pairs", "chirality_agreement"]


@dataclass(frozen=True)
class DenoiserConfig:
    """Sizes of the denoiser; ``num_scalars`` etc. are channels per parity (e.g. 32 -> 32x0e + 32x0o)."""

    num_scalars: int = 48
    num_vectors: int = 16
    num_tensors: int = 8
    num_layers: int = 4
    sh_lmax: int = 2
    num_rbf: int = 32
    rbf_max: float = 10.0
    cutoff: float | None = 5.0
    time_dim: int = 32
    edge_dim: int = 64
    # Start with a zero output head: a refiner whose target is a small step from its input then starts as the
    # identity and learns the step, instead of first unlearning an O(1) random output (which swamps a 0.1 Å signal).
    zero_init_head: bool = False

    def __post_init__(self):
        for field in ("num_scalars", "num_vectors", "num_layers", "num_rbf", "time_dim", "edge_dim", "sh_lmax"):
            if getattr(self, field) < 1:
                raise ValueError(f"model.{field} must be >= 1, got {getattr(self, field)}")
        if self.num_tensors < 0:
            raise ValueError(f"model.num_tensors must be >= 0, got {self.num_tensors}")
        if self.time_dim % 2:
            raise ValueError(f"model.time_dim must be even (sine and cosine halves), got {self.time_dim}")
        if self.rbf_max <= 0 or (self.cutoff is not None and self.cutoff <= 0):
            raise ValueError(f"model.rbf_max and model.cutoff must be > 0, got {self.rbf_max}, {self.cutoff}")

    @classmethod
    def small(cls) -> "DenoiserConfig":
        """About 100 k parameters: tests and smoke runs."""
        return cls(num_scalars=12, num_vectors=4, num_tensors=2, num_layers=3, num_rbf=16, time_dim=16, edge_dim=32)

    def to_dict(self) -> dict:
        return asdict(self)


def gaussian_smearing(d: Tensor, num: int, stop: float) -> Tensor:
    """Gaussian radial basis on [0, stop] with width equal to the spacing (Schuett et al. 2017, SchNet)."""
    centres = torch.linspace(0.0, stop, num, device=d.device, dtype=d.dtype)
    width = stop / max(num - 1, 1)
    return torch.exp(-0.5 * ((d[:, None] - centres[None]) / width) ** 2)


def cosine_envelope(d: Tensor, cutoff: float) -> Tensor:
    """0.5 (cos(pi d / rc) + 1) inside the cutoff, 0 outside (Behler & Parrinello 2007)."""
    return torch.where(d < cutoff, 0.5 * (torch.cos(math.pi * d / cutoff) + 1.0), torch.zeros_like(d))


def all_pairs(batch: Tensor) -> tuple[Tensor, Tensor]:
    """All ordered pairs (i, j), i != j, of nodes in the same graph: the full graph of every molecule."""
    device = batch.device
    order = torch.argsort(batch, stable=True)
    counts = torch.bincount(batch)
    first = torch.cumsum(counts, 0) - counts
    squares = counts * counts
    graph = torch.repeat_interleave(torch.arange(len(counts), device=device), squares)
    k = torch.arange(int(squares.sum()), device=device) - torch.repeat_interleave(torch.cumsum(squares, 0) - squares, squares)
    n = counts[graph]
    i, j = first[graph] + k // n, first[graph] + k % n
    keep = i != j
    return order[i[keep]], order[j[keep]]


def molecule_edges(pos: Tensor, batch: Tensor, edge_index: Tensor, edge_attr: Tensor,
                   cutoff: float | None) -> tuple[Tensor, Tensor, Tensor]:
    """Topological edges plus spatial pairs within the cutoff: edge_index (2, E), attributes + spatial flag, weights."""
    src, dst = all_pairs(batch)
    num_nodes = pos.shape[0]
    spatial = ~torch.isin(src * num_nodes + dst, edge_index[0] * num_nodes + edge_index[1])
    src, dst = src[spatial], dst[spatial]
    weight = torch.ones(src.shape[0], dtype=pos.dtype, device=pos.device)
    if cutoff is not None:
        d = (pos[src] - pos[dst]).norm(dim=-1)
        inside = d < cutoff
        src, dst, weight = src[inside], dst[inside], cosine_envelope(d[inside], cutoff)
    n_topo, n_space = edge_index.shape[1], src.shape[0]
    attr = torch.zeros(n_topo + n_space, edge_attr.shape[1] + 1, dtype=pos.dtype, device=pos.device)
    attr[:n_topo, :-1] = edge_attr.to(pos.dtype)
    attr[n_topo:, -1] = 1.0
    index = torch.cat([edge_index, torch.stack([src, dst])], dim=1)
    weights = torch.cat([torch.ones(n_topo, dtype=pos.dtype, device=pos.device), weight])
    return index, attr, weights


def chirality_agreement(pos: Tensor, chirality: Tensor, stereo_index: Tensor) -> Tensor:
    """Per atom: tag x normalised signed volume (b - a) . ((c - a) x (d - a)) of its rank-ordered neighbours; 0 off centres.

    A product of two pseudoscalars, so it is invariant under rotations and under reflecting geometry and tags
    together, and flips sign when only the geometry is mirrored: +1-ish for the tagged enantiomer, -1 for its image.
    """
    centre, a, b, c, d = stereo_index
    u, v, w = pos[b] - pos[a], pos[c] - pos[a], pos[d] - pos[a]
    volume = (u * torch.linalg.cross(v, w)).sum(-1)
    scale = (u.norm(dim=-1) * v.norm(dim=-1) * w.norm(dim=-1)).clamp_min(1e-12)
    return torch.zeros(pos.shape[0], dtype=pos.dtype, device=pos.device).index_add(0, centre, chirality[centre] * volume / scale)


def _mlp(dims: list[int]) -> nn.Module:
    """SiLU MLP initialised for unit-variance outputs, so tensor-product weights start at the scale e3nn expects."""
    return FullyConnectedNet(dims, act=nn.functional.silu)


def _gate(num_scalars: int, num_vectors: int, num_tensors: int) -> Gate:
    """Gated nonlinearity: SiLU on 0e, tanh (odd, so parity is kept) on 0o, sigmoid gates on l > 0 (Weiler et al. 2018)."""
    gated = o3.Irreps(f"{num_vectors}x1o + {num_vectors}x1e + {num_tensors}x2e + {num_tensors}x2o").remove_zero_multiplicities()
    return Gate(
        f"{num_scalars}x0e + {num_scalars}x0o", [nn.functional.silu, torch.tanh],
        f"{gated.num_irreps}x0e", [torch.sigmoid],
        gated,
    )


class EquivariantRMSNorm(nn.Module):
    """h / rms(h) over all components of a node, times a learnable gain per irrep channel (cf. Liao & Smidt 2023, Equiformer).

    The rms is invariant under O(3), so the map is equivariant; it keeps each layer's output at unit scale, which
    the tensor products need because their weights depend on the node scalars (each layer is quadratic in h).
    """

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(irreps.num_irreps))
        channel_of_component = [k for k, ir in enumerate(ir for mul, ir in irreps for _ in range(mul)) for _ in range(ir.dim)]
        self.register_buffer("channel", torch.tensor(channel_of_component, dtype=torch.long), persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        rms = (h.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt()
        return h / rms * self.gain[self.channel]


class TensorProductConv(nn.Module):
    """Tensor-product convolution h_i' = Norm(Lin(h_i) + Gate(sum_j w_ij TP(h_j, Y(r_ij); W_ij) / sqrt(sum_j w_ij))).

    Per-edge tensor-product weights W_ij come from an MLP on the edge embedding and both endpoints' scalars
    (Thomas et al. 2018; Jing et al. 2022; Corso et al. 2023).
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, gate: Gate, num_scalars_in: int, edge_dim: int):
        super().__init__()
        self.num_scalars_in = num_scalars_in
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, gate.irreps_in, shared_weights=False)
        self.fc = _mlp([edge_dim + 2 * num_scalars_in, edge_dim, self.tp.weight_numel])
        self.gate = gate
        self.skip = o3.Linear(irreps_in, gate.irreps_out)
        self.norm = EquivariantRMSNorm(gate.irreps_out)

    def forward(self, h: Tensor, edge_index: Tensor, edge_emb: Tensor, edge_sh: Tensor, edge_weight: Tensor,
                norm: Tensor) -> Tensor:
        src, dst = edge_index
        scalars = h[:, : self.num_scalars_in]
        weights = self.fc(torch.cat([edge_emb, scalars[src], scalars[dst]], dim=-1))
        messages = self.tp(h[src], edge_sh, weights) * edge_weight[:, None]
        pooled = scatter(messages, dst, dim=0, dim_size=h.shape[0], reduce="sum") / norm[:, None]
        return self.norm(self.skip(h) + self.gate(pooled))


class ConformerDenoiser(nn.Module):
    """Per-atom 1o prediction (epsilon, x0 or velocity) from noisy coordinates, noise level and the molecular graph."""

    def __init__(self, config: DenoiserConfig | None = None):
        super().__init__()
        self.config = config = config or DenoiserConfig()
        s = config.num_scalars
        self.irreps_sh = o3.Irreps.spherical_harmonics(config.sh_lmax)
        self.time_mlp = _mlp([config.time_dim, config.time_dim, config.time_dim])
        # Two invariant blocks per atom: the 0e channels, and the 0o channels once multiplied by the chirality sign.
        self.node_mlp = _mlp([NODE_DIM + 1 + config.time_dim, 2 * s, 2 * s])
        self.edge_mlp = _mlp([config.num_rbf + EDGE_DIM + 1 + config.time_dim, config.edge_dim, config.edge_dim])
        irreps = o3.Irreps(f"{s}x0e + {s}x0o")
        layers = []
        for _ in range(config.num_layers):
            gate = _gate(s, config.num_vectors, config.num_tensors)
            layers.append(TensorProductConv(irreps, self.irreps_sh, gate, s, config.edge_dim))
            irreps = gate.irreps_out
        self.layers = nn.ModuleList(layers)
        self.irreps_hidden = irreps
        self.head = o3.Linear(irreps, "1x1o")
        if config.zero_init_head:
            nn.init.zeros_(self.head.weight)

    def forward(self, x: Tensor, t: Tensor, graph: Data) -> Tensor:
        """x (N, 3) noisy coordinates, t (N,) or scalar network time, graph from ``featurize`` (or a Batch of them)."""
        batch = graph.batch if getattr(graph, "batch", None) is not None else torch.zeros(
            x.shape[0], dtype=torch.long, device=x.device)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        temb = self.time_mlp(sinusoidal_embedding(t, self.config.time_dim))
        chirality = graph.chirality.to(x.dtype)
        agreement = chirality_agreement(x, chirality, graph.stereo_index)
        node = self.node_mlp(torch.cat([graph.x.to(x.dtype), agreement[:, None], temb], dim=-1))
        even, odd = node.chunk(2, dim=-1)
        h = torch.cat([even, chirality[:, None] * odd], dim=-1)

        edge_index, edge_attr, edge_weight = molecule_edges(x, batch, graph.edge_index, graph.edge_attr, self.config.cutoff)
        src, dst = edge_index
        vec = x[src] - x[dst]  # only relative positions: translation invariance
        dist = vec.norm(dim=-1)
        edge_sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        rbf = gaussian_smearing(dist, self.config.num_rbf, self.config.rbf_max)
        edge_emb = self.edge_mlp(torch.cat([rbf, edge_attr, temb[dst]], dim=-1))
        # Envelope weights in the normaliser too, so a pair crossing the cutoff changes the output continuously;
        # sqrt rather than a plain mean so that a lone source (one stereocentre) is not diluted by the degree.
        norm = scatter(edge_weight, dst, dim=0, dim_size=x.shape[0], reduce="sum").clamp_min(1.0).sqrt()

        for layer in self.layers:
            h = layer(h, edge_index, edge_emb, edge_sh, edge_weight, norm)
        return remove_mean(self.head(h), batch)

    def __deepcopy__(self, memo: dict) -> "ConformerDenoiser":
        """A rebuilt copy with the same weights: deep-copying e3nn's code-generated modules adds stray buffers
        (``_tensor_constant0``), which breaks positional buffer matching (the core's EMA) and state-dict loading."""
        reference = next(self.parameters())
        clone = type(self)(self.config).to(device=reference.device, dtype=reference.dtype)
        clone.load_state_dict(self.state_dict())
        clone.train(self.training)
        for mine, theirs in zip(clone.parameters(), self.parameters()):
            mine.requires_grad_(theirs.requires_grad)
        memo[id(self)] = clone
        return clone

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def build_model(model_cfg: dict) -> ConformerDenoiser:
    """The denoiser of a ``model`` config section (fields of DenoiserConfig; ``name`` is ignored)."""
    fields = {k: v for k, v in model_cfg.items() if k != "name"}
    try:
        return ConformerDenoiser(DenoiserConfig(**fields))
    except TypeError as exc:
        raise ValueError(f"model: {exc}") from None
