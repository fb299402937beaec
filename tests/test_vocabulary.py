"""One vocabulary: a priority is named through settings.topology.Priority everywhere; no module spells one as a
string of its own (so renaming or adding a priority is one change, and a typo is an AttributeError)."""

import ast
from pathlib import Path

from settings.topology import Priority

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("jobs", "notifications", "settings", "harness")
DEFINITION = REPO / "settings" / "topology.py"


def test_no_module_spells_a_priority_as_a_string():
    spelled = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path == DEFINITION or "migrations" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in Priority.values:
                    spelled.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not spelled, "use settings.topology.Priority instead of:\n" + "\n".join(spelled)


def test_the_check_sees_a_spelled_priority():
    tree = ast.parse('queue = queue_name("marketing", channel)')
    assert any(isinstance(n, ast.Constant) and n.value in Priority.values for n in ast.walk(tree))
