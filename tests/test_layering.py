"""Layering: every module of the package imports on its own, and no import cycle hides behind a lazy import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bench"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere (functions too), except under ``if TYPE_CHECKING``.

    Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so those count as imported as well
    (that is how ``harness -> modules.base`` pulled in every method), except the packages ``name`` is in.
    """
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = ".".join(package[: len(package) - child.level + 1] + [child.module or ""]).strip(".") \
                    if child.level else child.module or ""
                names = [base] + [f"{base}.{alias.name}" for alias in child.names]
            else:
                names = []
            for imported in names:
                parts = imported.split(".")
                for length in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:length])
                    if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                        targets.add(prefix)
            visit(child)

    visit(ast.parse(path.read_text()))
    return targets


def test_the_import_graph_has_no_cycle_lazy_imports_included():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    done: set[str] = set()

    def cycle_from(name: str, trail: list[str]) -> list[str] | None:
        if name in trail:
            return trail[trail.index(name):] + [name]
        if name in done:
            return None
        for target in sorted(graph[name]):
            found = cycle_from(target, trail + [name])
            if found:
                return found
        done.add(name)
        return None

    for name in graph:
        cycle = cycle_from(name, [])
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_imports_on_its_own():
    # one interpreter (torch and lightning load once), the package's own modules dropped before each import:
    # each module is imported as if it came first, which is where a cycle turns into a partial-module ImportError
    script = "\n".join([
        "import importlib, sys, traceback",
        f"names = {sorted(_modules())!r}",
        "failures = []",
        "for name in names:",
        "    for loaded in [m for m in sys.modules if m == 'bench' or m.startswith('bench.')]:",
        "        del sys.modules[loaded]",
        "    try:",
        "        importlib.import_module(name)",
        "    except Exception:",
        "        failures.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])",
        "print('\\n'.join(failures))",
        "sys.exit(1 if failures else 0)",
    ])
    run = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
