"""The module stack of scidiff.mol: every module imports only modules below it, inference never imports training."""

from __future__ import annotations

import ast
from pathlib import Path

import scidiff.mol

# Bottom to top, as scidiff/mol/__init__.py draws it.
STACK = ["chem", "stereo", "io", "forcefield", "align", "torsion", "featurize", "denoiser", "torsion_head", "generate",
         "torsion_generate", "pipeline", "shards", "evaluate", "build", "torsion_data", "train", "torsion_train", "cli"]
INFERENCE = {"chem", "stereo", "io", "forcefield", "align", "torsion", "featurize", "denoiser", "torsion_head", "generate",
             "torsion_generate", "pipeline", "shards", "evaluate"}


def local_imports(path: Path) -> set[str]:
    """Sibling modules a module imports (``from .x import``, anywhere in the file, function bodies too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.module and node.module.startswith("scidiff.mol."):
                found.add(node.module.split(".")[2])
    return found


def test_every_module_is_in_the_stack():
    package = Path(scidiff.mol.__file__).parent
    assert sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__") == sorted(STACK)


def test_nothing_imports_upward_and_inference_never_imports_training():
    package = Path(scidiff.mol.__file__).parent
    for position, name in enumerate(STACK):
        imported = local_imports(package / f"{name}.py")
        above = imported & set(STACK[position:])
        assert not above, f"scidiff.mol.{name} imports {sorted(above)}, which sit at or above it"
        if name in INFERENCE:
            assert not imported & {"build", "train"}, f"inference module {name} imports the training side"
