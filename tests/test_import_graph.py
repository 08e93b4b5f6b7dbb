"""The package seams: no import cycle between top-level packages, no import of another package's CLI module,
and stages reach each other only through the shared core, the feature store and the packages' public tops."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent.name for p in REPO.glob("*/__init__.py") if p.parent.name != "tests")
STAGES = ("core", "encode", "align", "evaluate", "vlm2vec", "data_preparation", "quickstart")
# What a package may import from another one: the shared core, the feature store and backbone registry of
# encode/, and any package's top (its __init__: `from align import AlignedModel`).
PUBLIC = ("core", "encode.store", "encode.backbones")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, including imports inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def cross_imports() -> list[tuple[str, int, str]]:
    """(importing module, line, imported module) for imports of another top-level package's modules."""
    known = modules()
    found = []
    for name, path in known.items():
        top = name.split(".")[0]
        for line, target in imports(path):
            if target.split(".")[0] in PACKAGES and target.split(".")[0] != top and target in known:
                found.append((name, line, target))
    return found


def is_cli_module(name: str, path: Path) -> bool:
    if name.endswith(".__main__") or name.endswith(".cli") and not name.startswith("core."):
        return True
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body)


def test_no_cycle_between_top_level_packages():
    edges: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for name, _, target in cross_imports():
        edges[name.split(".")[0]].add(target.split(".")[0])

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in edges[start]
        )

    cycles = [p for p in PACKAGES if reaches(p, p, {p})]
    assert not cycles, (
        f"packages in an import cycle: {cycles}; edges: { {k: sorted(v) for k, v in edges.items()} }"
    )


def test_core_imports_no_stage():
    offending = [(n, line, t) for n, line, t in cross_imports() if n.startswith("core")]
    assert not offending, offending


def test_no_module_imports_another_packages_cli_module():
    known = modules()
    offending = [(n, line, t) for n, line, t in cross_imports() if is_cli_module(t, known[t])]
    assert not offending, offending


def test_stages_use_only_the_public_surface_of_other_packages():
    tops = set(PACKAGES)
    offending = [
        (name, line, target)
        for name, line, target in cross_imports()
        if name.split(".")[0] in STAGES
        and target not in tops
        and not any(target == p or target.startswith(p + ".") for p in PUBLIC)
    ]
    assert not offending, "\n".join(f"{n}:{line} imports {t}" for n, line, t in offending)


def test_the_checks_see_the_imports():
    """The graph is read from the sources: the trainers' use of the shared loop is one of its edges."""
    edges = {(n, t) for n, _, t in cross_imports()}
    assert ("align.train", "core.loop") in edges and ("vlm2vec.train", "core.loop") in edges
    assert is_cli_module("align.train", modules()["align.train"])
