"""The generic evaluation does not depend on the demo; no import cycle among eval/ and demo/ modules."""

import ast
from pathlib import Path

import segquant

PACKAGE = Path(segquant.__file__).parent


def imports_of(path: Path) -> set[str]:
    """segquant modules imported anywhere in ``path`` (top-level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segquant"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("segquant")}
    return found


def module_graph(folders=("eval", "demo")) -> dict[str, set[str]]:
    graph = {}
    for folder in folders:
        for path in sorted((PACKAGE / folder).glob("*.py")):
            name = f"segquant.{folder}" + ("" if path.stem == "__init__" else f".{path.stem}")
            graph[name] = imports_of(path)
    return graph


def test_eval_does_not_import_demo():
    offenders = {m: sorted(i for i in deps if i.startswith("segquant.demo"))
                 for m, deps in module_graph(("eval",)).items()}
    assert not any(offenders.values()), offenders


def test_no_cycle_between_eval_and_demo_modules():
    graph = module_graph()

    def reaches(start, target, seen):
        for nxt in graph.get(start, ()):
            if nxt == target:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, target, seen):
                    return True
        return False

    cycles = [m for m in graph if reaches(m, m, set())]
    assert not cycles, cycles
