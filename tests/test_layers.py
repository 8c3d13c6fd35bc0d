"""The package's layer order (DESIGN.md's data flow): no module imports from a higher layer,
and no two modules import each other, directly or round a loop.

Every ``import`` counts, at module level and inside functions alike (a deferred import is
still a dependency; only its cost moves). An import names the module it imports; a name
imported from a package (``from aidnet.preprocess import calcium_candidates``) counts as the
package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Lowest first; a module may import from its own layer and those before it. Top-level modules:
#: errors, atomic (file writes), commandline (argparse commands), agatston (scores and classes,
#: which the manifest and the calcium threshold of preprocessing use), allocator (the process's
#: malloc, set by the CLI), config (the run configuration, a dataclass with its presets) and the
#: package itself (its version) are the base every layer may use; phantom (synthetic cohorts: CT
#: files and a manifest) is a data source beside data; losses (of model outputs) sit beside models;
#: weights (where the shipped default model lies) is base; api (the notebook API over pipeline)
#: sits between pipeline and cli; inference (applying a network to scans) is above models, below
#: training (validation), evaluation/explain and pipeline (evaluate, explain, predict).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "aidnet",
            "aidnet.errors",
            "aidnet.atomic",
            "aidnet.agatston",
            "aidnet.allocator",
            "aidnet.commandline",
            "aidnet.roc",
            "aidnet.config",
            "aidnet.presets",
            "aidnet.weights",
        ),
    ),
    ("io", ("aidnet.io",)),
    ("lung", ("aidnet.lung",)),
    ("preprocess", ("aidnet.preprocess",)),
    ("data", ("aidnet.data", "aidnet.phantom")),
    ("models", ("aidnet.models", "aidnet.losses")),
    ("inference", ("aidnet.inference",)),
    ("training", ("aidnet.training",)),
    ("evaluation/explain", ("aidnet.evaluation", "aidnet.explain")),
    ("report", ("aidnet.report",)),
    ("pipeline", ("aidnet.pipeline",)),
    ("api", ("aidnet.api",)),
    ("cli", ("aidnet.cli",)),
]


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((SRC / "aidnet").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module ``name`` lives in: itself, or the nearest package above it."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """The package's modules ``name`` imports, each with the line of its first import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in node.names]
            targets = [t if t in known else base for t in targets]
        for target in targets:
            if target.split(".")[0] != "aidnet":
                continue
            module = _resolve(target, known)
            if module is not None and module != name:
                out[module] = min(out.get(module, node.lineno), node.lineno)
    return out


def layer_of(name: str) -> int | None:
    """The index in :data:`LAYERS` of a module (the longest matching prefix), or None."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = name == prefix or (prefix != "aidnet" and name.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def import_graph() -> dict[str, dict[str, int]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    """``module:line imports target`` for every import from a higher layer."""
    found = []
    for name, targets in sorted(graph.items()):
        mine = layer_of(name)
        for target, line in sorted(targets.items()):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                found.append(
                    f"{name}:{line} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})"
                )
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    unplaced = [name for name in modules() if layer_of(name) is None]
    assert not unplaced, f"place these modules in LAYERS of {__file__}: {unplaced}"


def test_no_module_imports_from_a_higher_layer():
    found = upward_imports(import_graph())
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" ↔ ".join(sorted(c)) for c in found)


def test_the_checks_can_fail(tmp_path):
    """A made-up upward import and a made-up loop are caught; imports inside functions and
    relative imports count."""
    graph = {
        "aidnet.io.read": {"aidnet.cli": 3},
        "aidnet.training.loop": {"aidnet.io.read": 5},
        "aidnet.pipeline.a": {"aidnet.pipeline.b": 1},
        "aidnet.pipeline.b": {"aidnet.pipeline.c": 1},
        "aidnet.pipeline.c": {"aidnet.pipeline.a": 1},
    }
    assert upward_imports(graph) == ["aidnet.io.read:3 (io) imports aidnet.cli (cli)"]
    assert cycles(graph) == [{"aidnet.pipeline.a", "aidnet.pipeline.b", "aidnet.pipeline.c"}]
    fake = tmp_path / "fake.py"
    fake.write_text("import numpy\n\n\ndef f():\n    from ..io import read\n")
    assert imports_of("aidnet.training.fake", fake, modules()) == {"aidnet.io.read": 5}
    assert layer_of("aidnet.models.heads") == layer_of("aidnet.losses") < layer_of("aidnet.cli")


def test_inference_is_out_of_training():
    """evaluate and predict apply a network through :mod:`aidnet.inference`, as training's
    validation does, not through the training loop."""
    import aidnet.training.loop as loop

    graph = import_graph()
    assert "aidnet.inference" in graph["aidnet.pipeline.evaluate"]
    assert "aidnet.inference" in graph["aidnet.training.validation"]
    assert not any(t.startswith("aidnet.training.loop") for t in graph["aidnet.pipeline.evaluate"])
    assert not hasattr(loop, "predict_items")
