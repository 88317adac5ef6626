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
from scidiff.mol.torsion import apply_torsion_changes, dihedral, rotatable_bonds
from scidiff.mol.torsion_head import TorsionPrior, TorsionScoreHead, bond_dihedrals, dihedral_angles, torsion_score

from .conftest import MOLECULES, embedded

EXACT = 1e-10


def head(seed: int = 0, cutoff: float | None = 5.0, harmonics: int = 0) -> TorsionScoreHead:
    torch.manual_seed(seed)
    net = TorsionScoreHead(ConformerDenoiser(DenoiserConfig.small()), cutoff=cutoff, harmonics=harmonics).eval()
    if harmonics:
        net.fourier_gain.data.fill_(1.0)  # trained away from its zero start, so the tests see the term
    return net


def molecule(name: str):
    mol = embedded(MOLECULES[name], name)
    graph = featurize(mol, mol.GetConformer().GetPositions())
    bonds = torch.tensor(rotatable_bonds(mol), dtype=torch.long).reshape(-1, 2).T
    return mol, graph, bonds


def times(graph) -> torch.Tensor:
    return torch.full((graph.num_nodes,), 400.0)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("cutoff,harmonics", [(5.0, 0), (None, 0), (5.0, 3)])
def test_invariant_under_rigid_motions_and_bond_direction(float64, cutoff, harmonics):
    _, g, bonds = molecule("S-ibuprofen")
    net = head(cutoff=cutoff, harmonics=harmonics)
    with torch.no_grad():
        out = net(g.pos, times(g), g, bonds)
        moved = net(g.pos @ o3.rand_matrix().T + 5 * torch.randn(3), times(g), g, bonds)
        reversed_bonds = net(g.pos, times(g), g, bonds.flip(0))
    assert out.shape == (bonds.shape[1],) and out.abs().min() > 1e-6
    assert rel(moved, out) < EXACT
    assert rel(reversed_bonds, out) < EXACT


@pytest.mark.parametrize("harmonics", [0, 3])
def test_reflection_odd_with_tags_and_chirality_sensitive_without(float64, harmonics):
    _, g, bonds = molecule("S-ibuprofen")
    net = head(harmonics=harmonics)
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


@pytest.mark.parametrize("harmonics", [0, 3])
def test_achiral_molecule_is_reflection_odd(float64, harmonics):
    _, g, bonds = molecule("E-crotonic acid")
    assert bonds.shape[1] == 1  # CH=CH-COOH
    net = head(harmonics=harmonics)
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


def test_bond_dihedrals_are_every_neighbour_pair_and_turn_with_the_bond(float64):
    """The Fourier term's dihedrals: every (a, i, j, b) with a, b bonded neighbours of i, j (hydrogens included), angles
    as torsion.dihedral's, each shifted by exactly the angle its bond is turned."""
    mol, g, bonds = molecule("S-ibuprofen")
    bond_of, quads = bond_dihedrals(g, bonds)
    for t, (i, j) in enumerate(bonds.T.tolist()):
        mine = {tuple(q) for q in quads.T[bond_of == t].tolist()}
        expected = {(a.GetIdx(), i, j, b.GetIdx()) for a in mol.GetAtomWithIdx(i).GetNeighbors()
                    for b in mol.GetAtomWithIdx(j).GetNeighbors() if a.GetIdx() != j and b.GetIdx() != i}
        assert mine == expected and len(mine) >= 4
    angles = dihedral_angles(g.pos, quads)
    assert np.allclose(angles.numpy(), dihedral(g.pos.numpy(), quads.T.numpy()), atol=1e-12)
    turn = np.linspace(0.4, 2.8, bonds.shape[1])  # the last one across the +-pi wrap for some dihedrals
    twisted = torch.from_numpy(apply_torsion_changes(g.pos.numpy(), mol, rotatable_bonds(mol), turn))
    shift = dihedral_angles(twisted, quads) - angles - torch.from_numpy(turn)[bond_of]
    assert torch.allclose(torch.remainder(shift + np.pi, 2 * np.pi) - np.pi, torch.zeros_like(shift), atol=1e-9)


def test_fourier_term_is_a_periodic_score_of_the_bond(float64):
    """With the atom features held fixed, the term is a trigonometric polynomial of degree `harmonics` in the turn of
    its bond: it comes back after a full turn, and its mean over a uniform turn is zero (no cos(0) part)."""
    mol, g, bonds = molecule("S-ibuprofen")
    net = head(harmonics=3)
    scalars = torch.randn(g.num_nodes, net.num_backbone_scalars)
    turns = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    with torch.no_grad():
        values = torch.stack([
            net.fourier_term(torch.from_numpy(apply_torsion_changes(g.pos.numpy(), mol, rotatable_bonds(mol),
                                                                    np.full(bonds.shape[1], turn))), g, bonds, scalars)
            for turn in [*turns, 2 * np.pi]])
    assert torch.allclose(values[-1], values[0], atol=1e-9)
    assert values[:-1].std(0).min() > 1e-3
    assert torch.allclose(values[:-1].mean(0), torch.zeros(bonds.shape[1]), atol=1e-9)


def test_torsion_prior_score_is_the_exact_score_of_its_noised_density(float64):
    """The graph-only prior's score at noise sigma equals d/dtau log of its density convolved with the wrapped normal,
    computed here by quadrature over a full turn of the bond; it is odd under a reflection."""
    mol, g, bonds = molecule("S-ibuprofen")
    torch.manual_seed(0)
    prior = TorsionPrior(g.x.shape[1], 16, 3)
    prior.gain.data.fill_(0.5)
    num_bonds, bonds_list = bonds.shape[1], rotatable_bonds(mol)

    def turned(u):  # bond 0 turned by u
        return torch.from_numpy(apply_torsion_changes(g.pos.numpy(), mol, bonds_list, np.eye(num_bonds)[0] * u))

    turns = np.linspace(-np.pi, np.pi, 360, endpoint=False)
    with torch.no_grad():
        # p0 up to a constant: integrate the sigma -> 0 score over the turn (it is d/du log p0)
        tiny = torch.full((num_bonds,), 1e-6)
        score0 = np.array([prior(turned(u), g, bonds, tiny)[0].item() for u in turns])
        log_p0 = np.cumsum(score0) * (turns[1] - turns[0])
        p0 = np.exp(log_p0 - log_p0.max())
        sigma, u0, k = 0.7, 0.4, np.arange(-10, 11)
        kernel = lambda u: np.exp(-((u - turns)[:, None] + 2 * np.pi * k) ** 2 / (2 * sigma**2)).sum(1)
        h = 1e-4
        expected = (np.log((p0 * kernel(u0 + h)).sum()) - np.log((p0 * kernel(u0 - h)).sum())) / (2 * h)
        got = prior(turned(u0), g, bonds, torch.full((num_bonds,), sigma))[0].item()
        assert abs(score0).max() > 0.1  # a prior that is not flat
        assert got == pytest.approx(expected, rel=2e-2, abs=2e-3)
        mirror = -o3.rand_matrix()
        flipped = copy.copy(g)
        flipped.chirality = -g.chirality
        at = torch.full((num_bonds,), sigma)
        assert rel(prior(g.pos @ mirror.T, flipped, bonds, at), -prior(g.pos, g, bonds, at)) < EXACT
