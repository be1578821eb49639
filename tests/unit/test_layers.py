"""The import rules of the package layout: each unit imports only units below it, the boundary packages never
import the flows, and only the wiring chooses implementations. Read from the source (every import statement,
also those inside functions and under TYPE_CHECKING), so a rule is broken the moment an import is written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sftp_pipeline

PACKAGE = Path(sftp_pipeline.__file__).parent

# Lowest first. A unit is a top-level module or package of sftp_pipeline ("" is the package's __init__).
LAYERS: list[tuple[str, frozenset[str]]] = [
    ("base", frozenset({"", "errors", "clock", "names", "fsutil", "faults", "locks", "config", "cron", "folders"})),
    ("boundary", frozenset({"openpgp", "transport", "ledger", "server"})),
    ("keys", frozenset({"keys"})),
    ("proof", frozenset({"proof"})),
    ("flows", frozenset({"flows"})),
    ("reporting", frozenset({"reporting"})),
    ("wiring", frozenset({"wiring"})),
    ("running", frozenset({"daemon", "check"})),
    ("demo", frozenset({"demo"})),
    ("command line", frozenset({"cli"})),
]
RANK = {unit: rank for rank, (_, units) in enumerate(LAYERS) for unit in units}
# Units of one layer do not import each other, except: the embedded server shares the client's SSH algorithm
# policy (transport/sshalgs.py); the base modules are small and import each other freely.
SIDEWAYS = {("server", "sftp_pipeline.transport.sshalgs")}
# Implementations: only the wiring (and their own package) chooses them; everything else sees the interfaces.
IMPLEMENTATIONS = (
    "sftp_pipeline.transport.sftp",
    "sftp_pipeline.transport.local",
    "sftp_pipeline.transport.retry",
    "sftp_pipeline.ledger.sqlite",
    "sftp_pipeline.ledger.migrations",
    "sftp_pipeline.server.",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, module) for every import of a sftp_pipeline module in ``path`` (module ``name``); ``from x import y``
    counts ``x.y`` when y is a module."""
    name = name or _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists()
                found.append((node.lineno, candidate if is_module else base))
    return [(line, module) for line, module in found if module.split(".")[0] == "sftp_pipeline"]


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(path)) for path in MODULES}
    assert units - set(RANK) == set(), "add the new unit to LAYERS"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_a_module_imports_only_units_below_it(path: Path) -> None:
    me = _unit(_module_name(path))
    wrong = []
    for line, module in _imports(path):
        other = _unit(module)
        if other == me or (RANK[me] == RANK[other] == 0):
            continue
        if (me, module) in SIDEWAYS:
            continue
        if RANK[other] >= RANK[me]:
            wrong.append(f"line {line}: {module} ({LAYERS[RANK[other]][0]}) from {LAYERS[RANK[me]][0]}")
    assert wrong == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_only_the_wiring_chooses_implementations(path: Path) -> None:
    me = _module_name(path)
    if me == "sftp_pipeline.wiring":
        return
    wrong = [
        f"line {line}: {module}"
        for line, module in _imports(path)
        if module.startswith(IMPLEMENTATIONS) or module == "sftp_pipeline.server"
        if _unit(module) != _unit(me)
    ]
    assert wrong == []


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """The checker itself: a flow importing the wiring, and a flow choosing the SQLite store, are both seen."""
    module = PACKAGE / "flows" / "send.py"
    found = {m: line for line, m in _imports(module)}
    assert "sftp_pipeline.ledger" in found and "sftp_pipeline.transport" in found
    fake = tmp_path / "x.py"
    fake.write_text("from sftp_pipeline.wiring import open_runtime\nimport sftp_pipeline.ledger.sqlite\n")
    imported = [m for _, m in _imports(fake, "sftp_pipeline.flows.x")]
    assert RANK[_unit(imported[0])] > RANK["flows"] and imported[1].startswith(IMPLEMENTATIONS)
