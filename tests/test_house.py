"""The package's shape: no import circle, imports pointing down, no module too long to hold in mind.

The import graph is read from the source with `ast` (nothing is imported), and counts every
`import` statement, those inside functions too: a circle hidden behind a lazy import is still a
circle.
"""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "medscout_data"
MAX_LINES = 600
# Lower layers never import upper ones: stages and the task makers are used by evaluation,
# hub, integrations and cli, never the other way round.
LOWER = ("stages", "sources", "tasks")
UPPER = ("evaluation", "hub", "integrations", "cli")


def modules() -> dict[str, Path]:
    """Module name -> source file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(known: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its source (module-level or inside a function)."""
    graph = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in known)
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    parts = package.split(".")
                    module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
                for alias in node.names:
                    target = f"{module}.{alias.name}"
                    deps.add(target if target in known else module)
        graph[name] = {d for d in deps if d in known and d != name}
    return graph


def cycle_of(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of the graph, or [] when there is none."""
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        return list(exc.args[1])
    return []


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = import_graph(modules())
    assert cycle_of(graph) == []
    graph["medscout_data.layout"] = graph["medscout_data.layout"] | {"medscout_data.hub.push"}
    circle = cycle_of(graph)
    assert "medscout_data.layout" in circle and "medscout_data.hub.push" in circle


def test_the_package_has_no_import_circle() -> None:
    circle = cycle_of(import_graph(modules()))
    assert circle == [], " -> ".join(circle)


def test_stages_never_import_evaluation_hub_integrations_or_cli() -> None:
    graph = import_graph(modules())
    upward = sorted(
        f"{name} imports {dep}"
        for name, deps in graph.items()
        if name.split(".")[1:2] and name.split(".")[1] in LOWER
        for dep in deps
        if dep.split(".")[1:2] and dep.split(".")[1] in UPPER
    )
    assert upward == []


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_is_longer_than_600_lines(name: str) -> None:
    lines = modules()[name].read_text("utf-8").count("\n")
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it along a real seam"


def test_every_relative_link_of_the_readme_leads_to_a_file() -> None:
    """The README is a landing page into docs/; `mkdocs build --strict` checks the site's own links."""
    root = PACKAGE.parent
    readme = (root / "README.md").read_text("utf-8")
    links = [t for t in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme) if "://" not in t]
    assert len(links) > 20
    assert [t for t in links if not (root / t).is_file()] == []
    assert "<!-- demo-command -->" in readme and "<!-- test-command -->" in readme
