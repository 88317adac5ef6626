"""Molecules: RDKit validation (chem), graphs (featurize), the chirality-aware e3nn denoiser (denoiser), conformer data
(datasets: builders and readers; build: leakage-free training lists and sharded builds), training (train), sampling
(generate) and the ``scidiff mol`` commands (cli).

Submodules are imported explicitly (``from scidiff.mol.featurize import featurize``) so that RDKit-only work,
such as conformer-building worker processes, does not pay for importing torch and e3nn.
"""
