"""The import directions between callhome's modules, read from the source with ``ast``.

The rules (docs/architecture.md, research/aesthetics.md): the pure modules depend on nothing but
the standard library and each other; ``transport`` and ``queue`` are independent; the collector
uses only ``schema`` from callhome and only the standard library (its relay part, lazily, also
the agent's queue and transport); outside the ``cli`` package only ``__main__`` imports it;
third-party packages are imported lazily, so ``import callhome`` loads none of them.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import sysconfig
from pathlib import Path

import pytest

import callhome

PACKAGE_DIR = Path(callhome.__file__).parent
PURE = {"callhome.config", "callhome.optout", "callhome.payload", "callhome.schema", "callhome.backoff",
        "callhome.buffer", "callhome.sessions", "callhome._digest"}
CONSTANTS = {"callhome._version"}
#: What the host hands the worker; host side, built from the pure modules only.
HOST_STATE = {"callhome._state"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


class _Imports(ast.NodeVisitor):
    """(imported module, lazy) pairs; lazy means inside a function, run only when it is called."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list = []
        self.depth = 0

    def visit_FunctionDef(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.orelse:  # what is imported for the type checker alone never runs
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, self.depth > 0) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.rsplit(".", node.level - 1)[0] if node.level > 1 else self.package
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        if module == "__future__":
            return
        for alias in node.names:
            candidate = f"{module}.{alias.name}"
            self.found.append((candidate if candidate in SOURCES else module, self.depth > 0))


def imports_of(module: str) -> list:
    path = SOURCES[module]
    visitor = _Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return visitor.found


GRAPH = {module: imports_of(module) for module in SOURCES}


def internal(module: str, eager_only: bool = False) -> set:
    return {target for target, lazy in GRAPH[module] if target.startswith("callhome") and not (eager_only and lazy)}


def closure(module: str, eager_only: bool = False, parents: bool = False) -> set:
    """Every callhome module ``module`` depends on; ``parents`` adds the package ``__init__`` run first."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        for target in internal(current, eager_only):
            names = [".".join(target.split(".")[:i]) for i in range(1, target.count(".") + 1)] if parents else []
            for name in (*names, target):
                if name in SOURCES and name not in seen:
                    seen.add(name)
                    todo.append(name)
    return seen


#: Standard modules of other supported Pythons than this one (``_sha2``: CPython 3.12+).
OTHER_VERSIONS_STDLIB = {"_sha2", "_sha1", "_sha256"}


def is_stdlib(name: str) -> bool:
    top = name.split(".")[0]
    if top in OTHER_VERSIONS_STDLIB:
        return True
    if hasattr(sys, "stdlib_module_names"):  # Python 3.10+
        return top in sys.stdlib_module_names
    if top in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(top)
    origin = (spec.origin or "") if spec else ""
    stdlib = sysconfig.get_paths()["stdlib"]
    return origin in ("built-in", "frozen") or (origin.startswith(stdlib) and "site-packages" not in origin)


def third_party(module: str) -> list:
    return [(t, lazy) for t, lazy in GRAPH[module] if not t.startswith("callhome") and not is_stdlib(t)]


def test_the_graph_is_read():
    assert set(PURE) | {"callhome.agent", "callhome.queue", "callhome.sender.transport", "callhome.cli",
                        "callhome.__main__", "callhome.collector.app"} <= set(SOURCES)
    assert "callhome.config" in internal("callhome.agent")
    assert ("callhome.schema", False) in GRAPH["callhome.collector.app"]
    assert ("requests", True) in GRAPH["callhome.sender.transport"]
    assert "callhome._worker.worker" in internal("callhome.agent") - internal("callhome.agent", eager_only=True)


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_only_the_stdlib_and_each_other(module):
    outside = {t for t, _ in GRAPH[module] if t.startswith("callhome")} - PURE - CONSTANTS
    assert outside == set()
    assert third_party(module) == []


def test_transport_and_queue_are_independent():
    assert "callhome.queue" not in closure("callhome.sender.transport")
    assert "callhome.sender.transport" not in closure("callhome.queue")
    assert {"callhome.queue", "callhome.memqueue"} & internal("callhome.sender.transport") == set()
    assert {"callhome.sender.transport", "callhome.sender.delivery"} & internal("callhome.queue") == set()


def test_data_flows_down_host_worker_sender_transport():
    """Nothing below the host imports the agent; the sender never imports the worker."""
    below_host = [m for m in SOURCES if m.startswith(("callhome._worker", "callhome.sender"))]
    for module in below_host:
        assert "callhome.agent" not in closure(module), module
    for module in (m for m in SOURCES if m.startswith("callhome.sender")):
        assert not any(t.startswith("callhome._worker") for t in closure(module)), module


def test_the_worker_package_is_imported_lazily_and_only_by_the_agent():
    importers = {m for m in SOURCES if not m.startswith("callhome._worker")
                 and any(t.startswith("callhome._worker") for t in internal(m))}
    assert importers == {"callhome.agent"}
    assert not any(t.startswith("callhome._worker") for t in internal("callhome.agent", eager_only=True))


#: The agent's delivery path that the relay reuses on a server; imported lazily, only by relay.py.
RELAY_DELIVERY = {"callhome.queue", "callhome.sender.delivery", "callhome.sender.transport", "callhome.config",
                  "callhome.optout", "callhome.buffer"}


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m.startswith("callhome.collector")))
def test_collector_uses_only_schema_and_the_stdlib(module):
    used = {t for t in internal(module) if not t.startswith("callhome.collector")}
    allowed = {"callhome.schema"} | (RELAY_DELIVERY if module == "callhome.collector.relay" else set())
    assert used <= allowed
    assert third_party(module) == []


def test_only_the_relay_uses_the_delivery_path_and_only_lazily():
    eager = {t for t in internal("callhome.collector.relay", eager_only=True) if not t.startswith("callhome.collector")}
    assert eager <= {"callhome.schema"}
    assert "callhome.sender.delivery" in internal("callhome.collector.relay")
    # so a collector that does not relay never loads requests
    assert RELAY_DELIVERY.isdisjoint(closure("callhome.collector.app", eager_only=True))


def in_cli(module: str) -> bool:
    return module == "callhome.cli" or module.startswith("callhome.cli.")


def test_only_main_imports_the_cli():
    """Outside the cli package only ``__main__`` and the integrations that mount it in click and
    typer import it; the package's modules import each other."""
    importers = {m for m in SOURCES if not in_cli(m) and any(in_cli(t) for t in internal(m))}
    assert importers == {"callhome.__main__", "callhome.integrations._forward",
                         "callhome.integrations.click", "callhome.integrations.typer"}
    # the detached sender's entry point does not load the CLI either
    assert not any(in_cli(m) for m in closure("callhome.sender.process"))


#: The integrations exist for hosts that already import their framework (and only they import them).
FRAMEWORK = {"callhome.integrations.click": ["click"], "callhome.integrations.typer": ["typer"]}


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_third_party_packages_are_imported_lazily(module):
    assert [t for t, lazy in third_party(module) if not lazy] == FRAMEWORK.get(module, [])


def test_import_callhome_loads_only_the_agent_and_the_pure_modules():
    loaded = closure("callhome", eager_only=True, parents=True)
    assert loaded <= PURE | CONSTANTS | HOST_STATE | {"callhome", "callhome.agent"}, sorted(loaded)
    assert "callhome.agent" in loaded


def test_no_module_imports_itself_or_an_unknown_callhome_module():
    for module in SOURCES:
        for target in internal(module):
            assert target in SOURCES, f"{module} imports {target}, which does not exist"
            assert target != module
