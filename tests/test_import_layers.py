"""Imports go one way: ``nvc_train.cli`` → ``nvc_train.commands`` → the library, and inside
the library the shared ``nvc_train.io`` never reaches into the codec or the data pipeline,
which in turn never reach into each other. Read from the source (every ``import``, also
those inside functions), so a late import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "nvc_train"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from nvc_train import cli`
    return {n for n in names if n.startswith("nvc_train")}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}

# (importer prefix, forbidden prefixes): who may not import whom
RULES = [
    ("nvc_train", ("nvc_train.cli",)),  # nothing imports the entry point
    ("nvc_train.commands", ("nvc_train.cli",)),
    ("nvc_train.io", ("nvc_train.codec", "nvc_train.data", "nvc_train.commands", "nvc_train.lit")),
    ("nvc_train.codec", ("nvc_train.data", "nvc_train.commands", "nvc_train.lit", "nvc_train.portable")),
    ("nvc_train.data", ("nvc_train.codec", "nvc_train.commands", "nvc_train.lit")),
    ("nvc_train.models", ("nvc_train.codec", "nvc_train.data", "nvc_train.commands", "nvc_train.lit", "nvc_train.quant")),
    ("nvc_train.quant", ("nvc_train.commands", "nvc_train.lit", "nvc_train.portable")),
    # the ONNX graphs and their runtime sit beside the PyTorch decoders, not under them
    ("nvc_train.portable", ("nvc_train.commands", "nvc_train.lit", "nvc_train.data", "nvc_train.eval", "nvc_train.hf")),
    ("nvc_train.eval", ("nvc_train.commands", "nvc_train.lit")),
    ("nvc_train.hf", ("nvc_train.commands", "nvc_train.lit")),
    # its decoder runs where Lightning is not installed (another release's venv, aarch64)
    ("nvc_train.crosscheck", ("nvc_train.commands", "nvc_train.lit", "nvc_train.eval", "nvc_train.hf")),
    ("nvc_train.lit", ("nvc_train.commands",)),
]


def violations(modules: dict[str, set[str]]) -> list[str]:
    found = []
    for importer, imports in modules.items():
        if importer == "nvc_train.cli":
            continue
        for prefix, forbidden in RULES:
            if importer == prefix or importer.startswith(prefix + "."):
                found += [f"{importer} imports {name}" for name in sorted(imports)
                          if any(name == f or name.startswith(f + ".") for f in forbidden)]
    return sorted(set(found))


def test_imports_go_one_way():
    assert violations(MODULES) == []


@pytest.mark.parametrize("importer,imported", [("nvc_train.commands.codec", "nvc_train.cli"),
                                               ("nvc_train.io.video", "nvc_train.codec.bitstream"),
                                               ("nvc_train.data.footage", "nvc_train.codec.files"),
                                               ("nvc_train.lit.checkpoints", "nvc_train.commands.export")])
def test_the_rule_catches_a_backward_import(importer, imported):
    """Control: one backward import added to the real graph is reported."""
    assert violations({**MODULES, importer: MODULES[importer] | {imported}}) == [f"{importer} imports {imported}"]
