"""Molecules: 3D conformers (hydrogens included, stereo kept) for any input molecule.

Modules, bottom to top (each imports only those before it):

    chem, stereo        RDKit primitives: prepare / validate a molecule, the Failure record; stereo signatures
    io, forcefield      every file format (SMILES tables, the conformer SDF, QM9 npz); ETKDG, MMFF94, GFN2-xTB
    align, torsion      Kabsch alignment; rotatable bonds, dihedrals, torsion moves, conformer matching
    featurize           prepared molecule -> graph with stereo encodings
    denoiser            the chirality-aware e3nn denoiser (build_model)
    torsion_head        the torsion score head on the denoiser's backbone (build_torsion_model)
    generate            sampling conformers with a trained model
    torsion_generate    sampling torsions of ETKDG + MMFF94 local structures (torsional diffusion)
    pipeline            read -> generate -> relax -> stereo check / fix / resample -> write; the generator registry
    shards              the pipeline over a large library: atomic SDF shards, a manifest, resume after a kill
    evaluate            metrics and reference sets
    cli                 ``scidiff mol generate | evaluate | build``
    build, train        training side: leakage-free SMILES lists and conformer sets; ``scidiff train experiment=mol_*``
    torsion_data,       torsional-diffusion examples (``scidiff mol build torsion-pairs``) and their training task
    torsion_train       (``scidiff train experiment=mol_torsion``)

This package exports the torch-free API; the model modules (featurize, denoiser, generate, train) are imported
explicitly, so RDKit-only work such as conformer-building worker processes never pays for torch and e3nn.
"""

from .chem import Built, Failure, MoleculeError, mol_from_smiles, prepare_mol
from .forcefield import RELAXATIONS, etkdg_conformers, mmff_relax, relax_conformers, xtb_relax
from .io import InputRecord, read_conformers, read_inputs, read_qm9, write_conformers
from .pipeline import DEFAULT_METHOD, GENERATORS, METHODS, GenerationUnavailable, generate, generate_mols, generate_outcomes, get_generator
from .stereo import check_conformers, check_stereo, fix_conformers, stereo_signature

__all__ = [
    "Built", "Failure", "MoleculeError", "mol_from_smiles", "prepare_mol",
    "RELAXATIONS", "etkdg_conformers", "mmff_relax", "relax_conformers", "xtb_relax",
    "InputRecord", "read_conformers", "read_inputs", "read_qm9", "write_conformers",
    "DEFAULT_METHOD", "GENERATORS", "METHODS", "GenerationUnavailable", "generate", "generate_mols", "generate_outcomes", "get_generator",
    "check_conformers", "check_stereo", "fix_conformers", "stereo_signature",
]
