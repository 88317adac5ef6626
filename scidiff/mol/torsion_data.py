"""Training data for torsional diffusion built here (``scidiff mol build torsion-pairs``): low-energy ensembles of
drug-like molecules and, for each reference conformer, an ETKDG local structure whose torsions are matched to it
(Jing et al. 2022's conformer matching), so every example is a local structure plus target torsions.

Per molecule (RDKit and numpy only, so the pool's workers never load torch):

1. ``num_conformers`` ETKDGv3 seeds, MMFF94-minimised, stereo-checked (``build.embed_conformers``);
2. the energy window: conformers within ``energy_window`` kcal/mol of the MMFF94 minimum;
3. de-duplication by heavy-atom symmetry-aware RMSD (``evaluate``'s GetBestRMS), lowest energy first, at most
   ``max_references`` kept: the reference ensemble, each conformer labelled with its level of theory ("MMFF94");
4. one local structure per reference: an ETKDGv3 + MMFF94 conformer of other seeds (what generation starts from);
5. ``torsion.match_torsions`` of each local structure to its reference, with a bounded differential evolution
   (``MATCH_POPSIZE``, ``MATCH_MAXITER``, ``MATCH_TOL``): measured on ChEMBL molecules with 4-10 rotatable bonds it
   reaches the RMSD of the unbounded search (popsize 15, maxiter 300) within 0.01 Å in 0.1-0.5 s instead of 0.2-8 s.

Each molecule is one record group of the conformer SDF dialect: conformers with ``example_role`` 0 (reference), 1
(local structure) and 2 (matched structure), the last two with ``pair`` = the index of their reference. The target
torsions of an example are the dihedrals ``torsion.torsion_atoms`` of the rotatable bonds on the matched structure
(``example_torsions``), which ``set_torsions`` applied to the local structure reproduces; ``match_rmsd`` is the
heavy-atom RMSD the matching reached. Built over the process pool of ``build`` into its resumable shards; a held-out
split of ``validation`` molecules (drawn with ``split_seed``) goes to its own folder.

Sized for 2 cores: one worker per free core (``processes``), shards of 20-64 molecules so a killed build loses
little. Cost measured here (one worker beside a busy core; 30 seeds, <= 35 heavy atoms, <= 10 references, 7.3
references and 5.2 rotatable bonds per molecule on average): 3.6 s per molecule (340 molecules in 20.4 min), most of
it ETKDG + MMFF94 of the seeds and local structures, 0.1-0.5 s per matching. N molecules take about 3.6 N / workers
seconds: 1,000 molecules ~1 h on one core, ~30 min on both. Matching reached a heavy-atom RMSD of 0.44 Å median
(0.56 mean; 54 % below 0.5 Å, 81 % below 1 Å) from 1.70 Å before, over 2,900 examples.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from rdkit import Chem, rdBase

from .build import (Item, ShardReport, _collect, _conformer_values, _job_runner, drugs_training_items,
                    embed_conformers, write_shards)
from .chem import Built, MoleculeError
from .torsion import dihedral, match_torsions, rotatable_bonds, torsion_atoms

__all__ = ["LEVEL_OF_THEORY", "REFERENCE", "LOCAL", "MATCHED", "torsion_items", "make_torsion_pairs",
           "build_torsion_pairs", "example_torsions", "examples_of", "reference_set"]

log = logging.getLogger(__name__)

LEVEL_OF_THEORY = "MMFF94"
REFERENCE, LOCAL, MATCHED = 0, 1, 2  # example_role of a conformer
MATCH_POPSIZE, MATCH_MAXITER, MATCH_TOL = 6, 30, 1e-3
LOCAL_SEED_OFFSET = 1_000_000  # local structures come from seeds far from the ensemble's


def torsion_items(limit: int | None = None, items: Sequence[Item] | None = None, max_heavy_atoms: int = 35,
                  seed: int = 0) -> tuple[list[Item], dict[str, int]]:
    """Drug-like (name, SMILES) items with at least one rotatable bond, every GEOM-DRUGS test molecule removed
    (``build.drugs_training_items``: stereo-free canonical SMILES), in a seeded random order (the default list starts
    with 50,000 ZINC molecules; a random order mixes ZINC and ChEMBL), then cut to ``limit``."""
    kept, dropped = drugs_training_items(items=items, max_heavy_atoms=max_heavy_atoms)
    order = np.random.default_rng(seed).permutation(len(kept))
    chosen: list[Item] = []
    dropped["no_rotatable_bond"] = 0
    for index in order:
        name, smiles = kept[int(index)]
        with rdBase.BlockLogs():
            mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        if not rotatable_bonds(mol):
            dropped["no_rotatable_bond"] += 1
            continue
        chosen.append((name, smiles))
        if limit is not None and len(chosen) == limit:
            break
    return chosen, dropped


def _ensemble(mol: Chem.Mol, energy_window: float, dedup_rmsd: float, max_references: int) -> list[int]:
    """Conformer ids of the reference ensemble: within the window, de-duplicated lowest energy first."""
    from .evaluate import _best_rms, _heavy  # the metrics' own RMSD, so de-duplication and coverage agree

    heavy = _heavy(mol)  # one hydrogen-free copy for every comparison
    energies = {c.GetId(): c.GetDoubleProp("energy") for c in mol.GetConformers()}
    lowest = min(energies.values())
    kept: list[int] = []
    for conf_id in sorted(energies, key=energies.get):
        if energies[conf_id] - lowest > energy_window:
            break
        if all(_best_rms(heavy, heavy, conf_id, other) > dedup_rmsd for other in kept):
            kept.append(conf_id)
            if len(kept) == max_references:
                break
    return kept


def make_torsion_pairs(name: str, smiles: str, num_conformers: int = 30, seed: int = 0, energy_window: float = 6.0,
                       dedup_rmsd: float = 0.5, max_references: int = 10) -> Chem.Mol:
    """One molecule's reference ensemble with a matched local structure per reference (module doc); raises
    MoleculeError when it has no rotatable bond or nothing embeds."""
    ensemble = embed_conformers(smiles, num_conformers, seed, mmff=True, name=name)
    bonds = rotatable_bonds(ensemble)
    if not bonds:
        raise MoleculeError(name, "no rotatable bond: nothing for torsional diffusion to learn")
    references = _ensemble(ensemble, energy_window, dedup_rmsd, max_references)
    local = embed_conformers(smiles, len(references), seed + LOCAL_SEED_OFFSET, mmff=True, name=name)
    lowest = min(c.GetDoubleProp("energy") for c in ensemble.GetConformers())
    out = Chem.Mol(ensemble)
    out.RemoveAllConformers()

    def add(pos: np.ndarray, role: int, **props: float) -> None:
        conf = Chem.Conformer(out.GetNumAtoms())
        conf.SetPositions(pos)
        conf.Set3D(True)
        conf.SetProp("level_of_theory", LEVEL_OF_THEORY)  # a record property of each conformer in the SDF
        conf.SetDoubleProp("example_role", float(role))
        for key, value in props.items():
            conf.SetDoubleProp(key, float(value))
        out.AddConformer(conf, assignId=True)

    local_confs = list(local.GetConformers())
    for j, ref_id in enumerate(references):
        ref_conf = ensemble.GetConformer(ref_id)
        ref_pos = ref_conf.GetPositions()
        energy = ref_conf.GetDoubleProp("energy")
        add(ref_pos, REFERENCE, pair=j, energy=energy, rel_energy=energy - lowest)
        # Fewer local structures than references when some lost their stereo: reuse them round-robin.
        local_pos = local_confs[j % len(local_confs)].GetPositions()
        match = match_torsions(local_pos, ref_pos, ensemble, bonds, seed=seed + j, popsize=MATCH_POPSIZE,
                               maxiter=MATCH_MAXITER, tol=MATCH_TOL)
        add(local_pos, LOCAL, pair=j)
        add(match.positions, MATCHED, pair=j, rmsd_before=match.rmsd_before, match_rmsd=match.rmsd_after)
    return out


def _torsion_job(job: tuple[str, str, int, int, float, float, int]):
    name, smiles, num_conformers, seed, window, dedup, max_refs = job
    try:
        mol = make_torsion_pairs(name, smiles, num_conformers, seed, window, dedup, max_refs)
    except MoleculeError as exc:
        return name, None, [], exc.reason
    return name, mol, _conformer_values(mol), ""


def build_torsion_pairs(out_dir: str | Path, items: Sequence[Item] | None = None, limit: int | None = None,
                        validation: int = 0, num_conformers: int = 30, energy_window: float = 6.0,
                        dedup_rmsd: float = 0.5, max_references: int = 10, shard_size: int = 64, seed: int = 0,
                        split_seed: int = 0, processes: int | None = None,
                        progress: Callable[[str], None] | None = print) -> tuple[dict[str, ShardReport], dict[str, int]]:
    """Torsion-pair shards of ``torsion_items`` (default: the drug-like list) into ``out_dir/train`` and, for a held-out
    split of ``validation`` molecules drawn from them, ``out_dir/validation``; resumable. Returns the reports by split
    and the counts of molecules dropped from the item list."""
    chosen, dropped = torsion_items(None if limit is None else limit + validation, items, seed=split_seed)
    held = set(np.random.default_rng(split_seed).choice(len(chosen), size=min(validation, len(chosen)), replace=False)
               .tolist()) if validation else set()
    # The held-out split first: a build stopped part-way still has its validation set.
    splits = {"validation": [it for k, it in enumerate(chosen) if k in held],
              "train": [it for k, it in enumerate(chosen) if k not in held]}
    if progress is not None:
        progress(f"torsion-pairs: {len(splits['train'])} training, {len(splits['validation'])} validation molecules; "
                 f"dropped {dropped}")
    settings = {"kind": "torsion_pairs", "num_conformers": num_conformers, "energy_window": energy_window,
                "dedup_rmsd": dedup_rmsd, "max_references": max_references, "shard_size": shard_size, "seed": seed,
                "level_of_theory": LEVEL_OF_THEORY, "match": {"popsize": MATCH_POPSIZE, "maxiter": MATCH_MAXITER,
                                                              "tol": MATCH_TOL}}
    reports: dict[str, ShardReport] = {}
    total = sum(len(v) for v in splits.values())
    with _job_runner(processes, total) as run:
        for split, split_items in splits.items():
            if not split_items:
                continue

            def make_shard(chunk: Sequence[Item], offset: int) -> Built:
                # seed + num_conformers * (offset + k): each molecule its own ETKDG seeds within its split
                jobs = [(n, s, num_conformers, seed + num_conformers * (offset + k), energy_window, dedup_rmsd,
                         max_references) for k, (n, s) in enumerate(chunk)]
                built = _collect(run(_torsion_job, jobs))
                log.info("torsion pairs: %s", built.summary())
                return built

            reports[split] = write_shards(split_items, Path(out_dir) / split, make_shard, settings, shard_size,
                                          progress=progress)
    return reports, dropped


def example_torsions(mol: Chem.Mol, positions: np.ndarray, bonds: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """The torsions (radians) of ``positions`` about the rotatable bonds: the target torsions of a matched structure."""
    bonds = rotatable_bonds(mol) if bonds is None else bonds
    quads = np.array([torsion_atoms(mol, b) for b in bonds], dtype=np.int64).reshape(-1, 4)
    return dihedral(positions, quads)


def examples_of(mol: Chem.Mol, role: int) -> dict[int, Chem.Conformer]:
    """pair -> conformer of one ``example_role`` of a torsion-pair molecule read back from its SDF."""
    confs = [c for c in mol.GetConformers() if c.HasProp("example_role")]
    if not confs:
        raise ValueError(f"{mol.GetProp('_Name') if mol.HasProp('_Name') else 'molecule'}: no example_role on its "
                         "conformers; build the set with `scidiff mol build torsion-pairs`")
    return {int(c.GetDoubleProp("pair")): c for c in confs if int(c.GetDoubleProp("example_role")) == role}


def reference_set(path: str | Path, limit: int | None = None) -> dict:
    """A torsion-pair folder (or SDF) as an evaluation set, in ``evaluate.load_reference_set``'s form: inputs parsed
    from each molecule's SMILES and its reference ensemble (the ``example_role`` 0 conformers; level of theory in
    ``level_of_theory``), e.g. the held-out split of a build."""
    from .chem import Failure, mol_from_smiles
    from .evaluate import DELTAS_DRUGS
    from .io import read_conformers

    skipped: list[Failure] = []
    inputs, references = [], []
    for mol in read_conformers(path, skipped=skipped)[:limit]:
        name = mol.GetProp("_Name")
        refs = Chem.Mol(mol)
        refs.RemoveAllConformers()
        for conf in examples_of(mol, REFERENCE).values():
            refs.AddConformer(Chem.Conformer(conf), assignId=True)
        try:
            inputs.append(mol_from_smiles(mol.GetProp("smiles"), name=name))
            references.append(refs)
        except MoleculeError as exc:
            skipped.append(Failure(name, exc.reason))
    level = references[0].GetProp("level_of_theory") if references and references[0].HasProp("level_of_theory") else "?"
    return {"inputs": inputs, "references": references, "deltas": DELTAS_DRUGS, "skipped": skipped,
            "label": f"{path} (held-out {level} ensembles built by scidiff mol build torsion-pairs)"}
