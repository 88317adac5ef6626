"""The torsion score head's symmetries in float64: invariant under rigid motions, odd under a reflection of geometry
and chirality tags together, and different for the mirror-image geometry when the tags are held fixed."""

import copy

import numpy as np
import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch

from scidiff.core import TorusProcess, torus_score_loss
from scidiff.mol.denoiser import ConformerDenoiser, DenoiserConfig
from scidiff.mol.featurize import featurize
from scidiff.mol.torsion import apply_torsion_changes, rotatable_bonds
from scidiff.mol.torsion_head import TorsionScoreHead, torsion_score

from .conftest import MOLECULES, embedded

EXACT = 1e-10


def head(seed: int = 0, cutoff: float | None = 5.0) -> TorsionScoreHead:
    torch.manual_seed(seed)
    return TorsionScoreHead(ConformerDenoiser(DenoiserConfig.small()), cutoff=cutoff).eval()


def molecule(name: str):
    mol = embedded(MOLECULES[name], name)
    graph = featurize(mol, mol.GetConformer().GetPositions())
    bonds = torch.tensor(rotatable_bonds(mol), dtype=torch.long).reshape(-1, 2).T
    return mol, graph, bonds


def times(graph) -> torch.Tensor:
    return torch.full((graph.num_nodes,), 400.0)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cutoff", [5.0, None])
def test_invariant_under_rigid_motions_and_bond_direction(float64, cutoff):
    _, g, bonds = molecule("S-ibuprofen")
    net = head(cutoff=cutoff)
    with torch.no_grad():
        out = net(g.pos, times(g), g, bonds)
        moved = net(g.pos @ o3.rand_matrix().T + 5 * torch.randn(3), times(g), g, bonds)
        reversed_bonds = net(g.pos, times(g), g, bonds.flip(0))
    assert out.shape == (bonds.shape[1],) and out.abs().min() > 1e-6
    assert rel(moved, out) < EXACT
    assert rel(reversed_bonds, out) < EXACT


def test_reflection_odd_with_tags_and_chirality_sensitive_without(float64):
    _, g, bonds = molecule("S-ibuprofen")
    net = head()
    mirror = -o3.rand_matrix()  # improper
    flipped = copy.copy(g)
    flipped.chirality = -g.chirality
    with torch.no_grad():
        out = net(g.pos, times(g), g, bonds)
        reflected_both = net(g.pos @ mirror.T, times(g), flipped, bonds)
        reflected = net(g.pos @ mirror.T, times(g), g, bonds)
    # geometry and tags mirrored: the same molecule's mirrored dihedrals, whose scores are exactly negated
    assert rel(reflected_both, -out) < EXACT
    # tags fixed: the mirror geometry is the other enantiomer, not treated as the same molecule
    assert rel(reflected, -out) > 0.01, rel(reflected, -out)


def test_achiral_molecule_is_reflection_odd(float64):
    _, g, bonds = molecule("E-crotonic acid")
    assert bonds.shape[1] == 1  # CH=CH-COOH
    net = head()
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0]))
    with torch.no_grad():
        assert rel(net(g.pos @ mirror.T, times(g), g, bonds), -net(g.pos, times(g), g, bonds)) < EXACT


def test_batch_and_torsion_sensitivity_and_loss(float64):
    """Two molecules batched give each one's own scores; a torsion change changes the scores; the head trains with
    the core's torus loss (finite loss, gradients reach the backbone)."""
    mol_a, a, bonds_a = molecule("S-ibuprofen")
    _, b, bonds_b = molecule("L-alanine")
    net = head()
    batch = Batch.from_data_list([a, b])
    bonds = torch.cat([bonds_a, bonds_b + a.num_nodes], dim=1)
    with torch.no_grad():
        together = net(batch.pos, torch.full((batch.num_nodes,), 400.0), batch, bonds)
        alone = torch.cat([net(a.pos, times(a), a, bonds_a), net(b.pos, times(b), b, bonds_b)])
        twisted = apply_torsion_changes(a.pos.numpy(), mol_a, rotatable_bonds(mol_a), np.full(bonds_a.shape[1], 1.0))
        changed = net(torch.from_numpy(twisted), times(a), a, bonds_a)
    assert rel(together, alone) < EXACT
    assert rel(changed, alone[: bonds_a.shape[1]]) > 0.01

    process = TorusProcess()
    torsions = torch.zeros(bonds_a.shape[1])
    def score(x_t, sigma):  # the head at the local structure (a torsion-to-coordinates map is the next step)
        return torsion_score(net, a.pos, process.network_time(sigma[:1]).expand(a.num_nodes), a, bonds_a, sigma)
    loss = torus_score_loss(score, torsions, process, generator=torch.Generator().manual_seed(0),
                            batch=torch.zeros(len(torsions), dtype=torch.long), num_graphs=1)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.backbone.parameters())
