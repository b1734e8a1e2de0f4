"""Layering: every module imports on its own, no import cycle between modules or packages (lazy imports included),
every dependency between packages is one the table allows, and only the suite's classes (and those the user names)
are registered."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

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
                base = (
                    ".".join(package[: len(package) - child.level + 1] + [child.module or ""]).strip(".")
                    if child.level
                    else child.module or ""
                )
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
            return trail[trail.index(name) :] + [name]
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


@pytest.fixture(scope="module")
def fresh_imports() -> dict:
    """One interpreter (torch and lightning load once) importing each module of the package as if it came first.

    The package's own modules are dropped before each import, which is where a cycle turns into a partial-module
    ImportError; last, ``bench.attacks.shadow_models`` and the method base class, to see which methods they load.
    """
    script = "\n".join(
        [
            "import importlib, json, sys, traceback",
            f"names = {sorted(_modules())!r}",
            "def forget():",
            "    for loaded in [m for m in sys.modules if m == 'bench' or m.startswith('bench.')]:",
            "        del sys.modules[loaded]",
            "failures = []",
            "for name in names:",
            "    forget()",
            "    try:",
            "        importlib.import_module(name)",
            "    except Exception:",
            "        failures.append(name + ': ' + traceback.format_exc().strip().splitlines()[-1])",
            "forget()",
            "import bench.attacks.shadow_models",
            "from bench.modules.base import PrivacyModule",
            "loaded = sorted(m for m in sys.modules if m.startswith('bench.modules.'))",
            "print(json.dumps({'failures': failures, 'loaded_with_the_base_class': loaded}))",
        ]
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_module_imports_on_its_own(fresh_imports):
    assert not fresh_imports["failures"], "\n".join(fresh_imports["failures"])


def test_the_method_base_class_imports_without_any_method(fresh_imports):
    # shadow models (and a user's method) need PrivacyModule, not the suite's 13 methods
    assert fresh_imports["loaded_with_the_base_class"] == ["bench.modules.base", "bench.modules.lightning_internals"]


# ---------------------------------------------------------------------- packages

#: what each part of ``bench`` may import (its subpackages and top-level modules, by the first name after ``bench.``),
#: lazy imports inside functions included. Read upwards: a part may use those listed for it, never the other way,
#: so the graph stays acyclic. A new dependency is a decision: add it here, where the cycle test checks it.
ALLOWED_DEPENDENCIES: dict[str, set[str]] = {
    # foundations: plain data and errors, no torch models
    "errors": set(),
    "threat_models": set(),
    "records": {"errors"},
    "spec": {"errors"},
    "deprecation": {"errors"},
    "loggers": {"errors"},
    "claims": {"deprecation", "errors"},
    # building blocks shared by several papers
    "transforms": {"errors"},
    "metrics": {"errors", "spec"},
    "networks": {"deprecation", "errors", "spec"},
    "batching": {"errors", "networks"},
    "privacy": {"errors", "networks", "spec"},
    "training": {"errors", "networks"},
    "datamodules": {"errors", "spec"},
    # methods, attacks and the search that serves ATS
    "modules": {
        "datamodules",
        "deprecation",
        "errors",
        "metrics",
        "networks",
        "privacy",
        "spec",
        "threat_models",
        "training",
        "transforms",
    },
    "attacks": {"batching", "datamodules", "errors", "metrics", "modules", "networks", "spec", "threat_models"},
    # names -> classes, and what reads checkpoints by those names
    "registry": {"attacks", "datamodules", "errors", "modules"},
    "checkpoints": {"errors", "registry"},
    "ats": {"batching", "errors", "metrics", "networks", "registry", "spec", "transforms"},
    # the harness and everything that runs it
    "harness": {
        "attacks",
        "datamodules",
        "errors",
        "metrics",
        "modules",
        "records",
        "registry",
        "spec",
        "threat_models",
    },
    "leaderboard": {"claims", "deprecation", "errors", "records", "spec", "threat_models"},
    # evaluate -> record -> write -> log, and the leaderboard refresh after a run (never from a callback)
    "evaluator": {"attacks", "datamodules", "errors", "harness", "leaderboard", "metrics", "modules", "records"},
    "callbacks": {
        "attacks",
        "checkpoints",
        "datamodules",
        "errors",
        "evaluator",
        "harness",
        "metrics",
        "modules",
        "records",
        "registry",
        "spec",
        "threat_models",
        "training",
    },
    "lightning_cli": {
        "attacks",
        "callbacks",
        "checkpoints",
        "datamodules",
        "deprecation",
        "errors",
        "evaluator",
        "loggers",
        "modules",
        "records",
        "registry",
        "spec",
    },
    "sweeps": {"errors", "leaderboard", "lightning_cli", "records", "registry"},
    "testing": {
        "attacks",
        "callbacks",
        "checkpoints",
        "datamodules",
        "errors",
        "evaluator",
        "modules",
        "records",
        "registry",
        "threat_models",
    },
    # auditing a model trained elsewhere: the harness's attacks through the evaluator, on an adapter module
    "audit": {
        "attacks",
        "checkpoints",
        "datamodules",
        "errors",
        "evaluator",
        "harness",
        "metrics",
        "modules",
        "records",
        "registry",
        "threat_models",
    },
    "cli": {
        "attacks",
        "audit",
        "callbacks",
        "checkpoints",
        "datamodules",
        "errors",
        "evaluator",
        "leaderboard",
        "lightning_cli",
        "loggers",
        "modules",
        "networks",
        "records",
        "registry",
        "sweeps",
    },
}


def _part(module: str) -> str:
    """``bench.attacks.lira`` -> ``attacks``; ``bench.registry`` -> ``registry``; the root ``bench`` stays ``bench``."""
    return module.split(".")[1] if "." in module else module


def package_graph() -> dict[str, set[str]]:
    """Which parts of ``bench`` import which, from every import of every module (inside functions too).

    Importing anything runs ``bench/__init__`` first, so the root is no dependency of its own."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = {_part(target) for target in _imports(name, path, modules)}
        graph.setdefault(_part(name), set()).update(targets - {_part(name), "bench"})
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    finished: set[str] = set()

    def visit(node: str, trail: list[str]) -> list[str] | None:
        if node in trail:
            return trail[trail.index(node) :] + [node]
        if node in finished:
            return None
        for target in sorted(graph.get(node, ())):
            found = visit(target, trail + [node])
            if found:
                return found
        finished.add(node)
        return None

    for node in sorted(graph):
        found = visit(node, [])
        if found:
            return found
    return None


def test_the_package_graph_has_no_cycle_lazy_imports_included():
    cycle = _cycle(package_graph())
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_every_package_dependency_is_in_the_allowed_table():
    graph = package_graph()
    unlisted = sorted(set(graph) - set(ALLOWED_DEPENDENCIES) - {"bench"})
    assert not unlisted, f"parts of bench missing from ALLOWED_DEPENDENCIES: {unlisted}"
    forbidden = sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        if source != "bench"
        for target in targets - ALLOWED_DEPENDENCIES[source]
    )
    assert not forbidden, "imports the table does not allow (add them to ALLOWED_DEPENDENCIES if meant): " + ", ".join(
        forbidden
    )
    assert not graph.get("bench"), f"bench/__init__ imports parts of the package: {graph.get('bench')}"


def test_the_allowed_table_itself_has_no_cycle():
    cycle = _cycle(ALLOWED_DEPENDENCIES)
    assert cycle is None, "ALLOWED_DEPENDENCIES allows a cycle: " + " -> ".join(cycle)


# ---------------------------------------------------------------------- registration


def test_a_subclass_defined_outside_the_suite_is_not_registered(capsys):
    from bench import registry
    from bench.cli import main
    from bench.modules.base import PrivacyModule
    from bench.threat_models import ThreatModel

    class DefinedInATest(PrivacyModule):
        threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)

    assert "DefinedInATest" not in registry.methods()
    assert DefinedInATest not in registry.methods().values()
    main(["list"])
    listing = capsys.readouterr().out
    assert "DefinedInATest" not in listing and "SplitNetwork" in listing


#: concrete suite classes left out of the registry on purpose, and why
UNREGISTERED = {
    # an adapter around a user's own model that only `bench audit` builds: no config or checkpoint may name it
    "bench.audit.external.ExternalClassifier",
    "bench.audit.split.ExternalRelease",
}


def test_every_concrete_class_of_the_suite_is_listed_in_the_registry():
    # a suite class that SUITE forgets would silently leave `bench list`; walking the subclasses finds it
    import bench.attacks  # noqa: F401
    import bench.datamodules  # noqa: F401
    from bench import registry
    from bench.attacks.base import Attack
    from bench.datamodules.base import PrivacyDataModule
    from bench.modules import _DEFINED_IN
    from bench.modules.base import PrivacyModule

    for name in _DEFINED_IN:
        __import__(f"bench.modules.{_DEFINED_IN[name]}")
    for kind, base in (("method", PrivacyModule), ("datamodule", PrivacyDataModule), ("attack", Attack)):
        found, stack = set(), list(base.__subclasses__())
        while stack:
            cls = stack.pop()
            stack.extend(cls.__subclasses__())
            if (
                cls.__module__.startswith("bench.")
                and not cls.__dict__.get("abstract", False)
                and not cls.__name__.startswith("_")
                and f"{cls.__module__}.{cls.__qualname__}" not in UNREGISTERED
            ):
                found.add(f"{cls.__module__}.{cls.__qualname__}")
        assert found == {f"{module}.{name}" for name, module in registry.SUITE[kind].items()}, kind
    assert set(_DEFINED_IN) == set(registry.SUITE["method"])


def test_a_class_the_user_names_is_registered_for_later_lookups(tmp_path, monkeypatch):
    from bench import registry

    (tmp_path / "layering_user_pkg.py").write_text(
        "from bench.modules.base import PrivacyModule\nfrom bench.threat_models import ThreatModel\n\n\n"
        "class Mine(PrivacyModule):\n    threat_models = (ThreatModel.BLACK_BOX_OUTPUTS,)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry._NAMED, "method", {})
    try:
        assert "layering_user_pkg.Mine" not in registry.methods()
        mine = registry.resolve_class("method", "layering_user_pkg.Mine", allow_import=True)
        assert registry.lookup("method", "layering_user_pkg.Mine") is mine  # e.g. the checkpoint a fit writes
        assert registry.methods()["layering_user_pkg.Mine"] is mine
    finally:
        sys.modules.pop("layering_user_pkg", None)


def test_a_config_names_the_suites_classes_by_their_short_names(tmp_path, capsys):
    # bench.modules no longer imports every method, so the command line loads the registered ones before parsing
    from bench.cli import main

    config = tmp_path / "short.yaml"
    config.write_text("model:\n  class_path: RAN\ndata:\n  class_path: Digits\n")
    with pytest.raises(SystemExit) as exit_code:
        main(["fit", "--config", str(config), "--print_config"])
    printed = capsys.readouterr()
    assert exit_code.value.code in (0, None), printed.err
    assert "class_path: bench.modules.RAN" in printed.out and "class_path: bench.datamodules.Digits" in printed.out


# ---------------------------------------------------------------------- papers

PAPERS = PACKAGE.parent / "docs" / "papers"


def test_every_method_of_the_suite_has_its_papers_page_and_every_link_there_resolves():
    import re

    from bench import registry

    pages = {page: page.read_text() for page in sorted(PAPERS.glob("*.md")) if page.name != "README.md"}
    index = (PAPERS / "README.md").read_text()
    assert all(f"]({page.name})" in index for page in pages), "docs/papers/README.md must link every page"
    for method in registry.SUITE["method"]:
        assert any(f"`{method}`" in text for text in pages.values()), f"no paper page names {method}"
    for page, text in {**pages, PAPERS / "README.md": index}.items():
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            assert (page.parent / link).exists(), f"{page.name} links to {link}, which does not exist"
