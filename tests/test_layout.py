"""The code's layout: attribute keys in the record only, and modules that import no cycle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Optuna's attribute API: only the record (and storage.py, for Optuna's private keys) uses it.
ATTRIBUTE_API = re.compile(r"\b(user_attrs|system_attrs|set_user_attr|set_system_attr)\b")
ALLOWED = {"search/record.py", "search/storage.py"}
# Where a process starts, the only places that may change the environment it passes on.
ENTRY_POINTS = {"search/cli.py", "search/worker.py"}
ENVIRONMENT_WRITE = re.compile(
    r"os\.environ(\[[^]]+\]\s*=|\.update|\.setdefault|\.pop)|os\.(putenv|unsetenv)"
)


def test_trial_and_study_attributes_are_read_and_written_through_the_record():
    found = []
    for folder in ("search", "spaces", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            name = path.relative_to(REPO).as_posix()
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                # `enqueue_trial(params, user_attrs=queued_attrs(...))` names Optuna's argument.
                line = line.replace("user_attrs=queued_attrs(", "")
                if name not in ALLOWED and ATTRIBUTE_API.search(line):
                    found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports, at its top or in a function (not for typing)."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    names = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names & modules


def test_no_module_imports_one_that_imports_it_back():
    files = {
        f"{package}.{path.stem}" if path.stem != "__init__" else package: path
        for package in ("search", "spaces")
        for path in (REPO / package).glob("*.py")
    }
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    closure = {name: reachable(name) for name in graph}
    cycles = {frozenset({a} | {b for b in closure[a] if a in closure[b]}) for a in graph}
    cycles = [set(c) for c in cycles if len(c) > 1]
    assert not cycles, cycles


def test_settings_travel_as_objects_not_through_the_environment():
    # Read once at a process's edge (`Settings.from_env`), then passed down: nothing below
    # an entry point changes the environment for a later reader.
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for folder in ("search", "spaces")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path.relative_to(REPO).as_posix() not in ENTRY_POINTS
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if ENVIRONMENT_WRITE.search(line)
    ]
    assert not found, "\n".join(found)
    # The command line parses and calls the API; what it does lives there.
    assert len((REPO / "search" / "cli.py").read_text().splitlines()) < 350
