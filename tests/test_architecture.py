"""The code's shape, read from the source with ``ast`` (nothing is imported): no import loop among
the project's modules, no private name imported from another module, and no module over 400
lines unless its docstring says why (issue 22)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_FOLDERS = ("taps", "workbench", "app_pages", "benchmarks", "scripts")  # tests/ is not checked
MAX_LINES = 400
LONG_REASON = "Long because"  # a line of the module docstring that starts so states why it is long

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in [ROOT / "app.py", *(p for folder in SHIPPED_FOLDERS
                                                         for p in sorted((ROOT / folder).rglob("*.py")))]}
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def import_statements(module: str) -> list[tuple[str, str | None]]:
    """(dotted module, name or None) for every import in ``module``, at any depth (an import
    inside a function is still a dependency: a lazy import hides a loop, it does not remove it;
    one under ``if TYPE_CHECKING:`` is for type hints only and never runs), relative imports made
    absolute; ``from package import sub`` names the module ``package.sub``."""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in runtime_nodes(TREES[module]):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None) if sub in MODULES else (base, alias.name))
    return found


def imported(module: str) -> list[tuple[str, str | None]]:
    """(project module, name or None) that ``module`` imports; ``import a.b.c`` counts as
    importing the longest prefix that is a project module."""
    out = []
    for target, name in import_statements(module):
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != module:
            out.append((target, name))
    return out


def unresolved_imports() -> set[tuple[str, str]]:
    """(importer, dotted module) for imports of project modules that do not exist: a relative
    import left pointing at the wrong package fails only when its line runs."""
    tops = {m.partition(".")[0] for m in MODULES}
    return {(m, target) for m in MODULES for target, _ in import_statements(m)
            if target.partition(".")[0] in tops and target not in MODULES}


def import_loops() -> set[frozenset[str]]:
    """Every set of modules that import each other in a circle. A package's own __init__ running
    before its submodules is not an edge: re-exporting submodules from a package would otherwise
    always be a loop."""
    return circles({m: {t for t, _ in imported(m)} for m in MODULES})


def circles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index, low, stack, on_stack, loops = {}, {}, [], set(), set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                loops.add(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return loops


def private_imports() -> set[tuple[str, str]]:
    """(importer, module.name) for every underscore name imported from another project module."""
    return {(m, f"{target}.{name}") for m in MODULES for target, name in imported(m)
            if name and name.startswith("_") and not name.startswith("__")}


def long_modules() -> dict[str, int]:
    """Modules over MAX_LINES lines whose docstring does not say why."""
    out = {}
    for m, path in MODULES.items():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        doc = ast.get_docstring(TREES[m]) or ""
        if lines > MAX_LINES and not any(line.strip().startswith(LONG_REASON) for line in doc.splitlines()):
            out[m] = lines
    return out


def test_the_checks_see_the_whole_project():
    assert {"taps", "taps.data.loading", "workbench.store.runs", "app", "app_pages.launch"} <= set(MODULES)
    # the import reader resolves relative, nested and lazy imports to modules
    assert ("taps.data.glyphs", None) in imported("taps.data.sources")                  # from .. import glyphs
    assert ("taps.data.folders", "class_dirs") in imported("taps.data.manifests")  # from .folders import …
    assert ("taps.data", "load_dataset") in imported("taps.training.tasks")
    assert ("taps.training.train_config", "TrainConfig") not in imported("taps.training.tasks")       # type hints only
    assert ("workbench.store", "RunStore") in imported("workbench.worker")


def test_circles_are_found_however_long():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert circles(graph) == {frozenset("abc"), frozenset("ef")}


def test_every_import_of_a_project_module_finds_it():
    assert unresolved_imports() == set()


def test_no_import_loops():
    assert import_loops() == set()


def test_no_private_name_is_imported_from_another_module():
    assert private_imports() == set()


def test_no_module_is_long_without_a_stated_reason():
    assert long_modules() == {}, f"split these modules, or start a line of their docstring with {LONG_REASON!r}"


def _reads_the_store_directly(source: str) -> list[str]:
    """Where code reaches past the Launcher to the run store: importing ``workbench.store``,
    building a RunStore, or ``launcher.store``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workbench.store"):
            found.append(f"line {node.lineno}: from {node.module} import")
        if isinstance(node, ast.Attribute) and node.attr == "store" and isinstance(node.value, ast.Name) \
                and node.value.id == "launcher":
            found.append(f"line {node.lineno}: launcher.store")
        if isinstance(node, ast.Name) and node.id == "RunStore":
            found.append(f"line {node.lineno}: RunStore")
    return found


def test_pages_and_notebooks_read_runs_through_the_launcher():
    import json

    sources = {p.relative_to(ROOT): p.read_text(encoding="utf-8") for p in (ROOT / "app_pages").glob("*.py")}
    sources[Path("app.py")] = (ROOT / "app.py").read_text(encoding="utf-8")
    for nb in (ROOT / "notebooks").glob("*.ipynb"):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        sources[nb.relative_to(ROOT)] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert len(sources) >= 8
    offenders = {str(path): found for path, source in sources.items() if (found := _reads_the_store_directly(source))}
    assert not offenders, f"read the runs through the Launcher (list_runs, get, frontier, …): {offenders}"
    assert _reads_the_store_directly("from workbench.store import TERMINAL\n"
                                     "launcher = Launcher(RunStore(root))\nlauncher.store.sweeps()") == [
        "line 1: from workbench.store import", "line 2: RunStore", "line 3: launcher.store"]  # the check finds what it looks for


# Item 3 of the redesign: pages and the analysis notebooks read through the workbench (the
# Launcher, workbench.catalogue, workbench.task_packs, workbench.figures), never the taps library.
LIBRARY_NOTEBOOKS = {"01_walkthrough"}  # teaches the taps library itself


def _imports_taps(target: str) -> bool:
    return target == "taps" or target.startswith("taps.")


def _notebook_code(path: Path) -> str:
    import json

    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def _taps_imports_in(tree: ast.AST) -> list[str]:
    """The taps modules a parsed notebook imports, at any depth (relative imports cannot occur)."""
    found = []
    for node in runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _imports_taps(a.name)]
        elif isinstance(node, ast.ImportFrom) and not node.level and _imports_taps(node.module or ""):
            found.append(node.module)
    return found


def test_pages_import_the_workbench_not_the_taps_library():
    pages = {m for m in MODULES if m == "app" or m.startswith("app_pages.")}
    assert {"app", "app_pages.task_packs", "app_pages.frontier", "app_pages.launch"} <= pages
    offenders = {m: sorted({t for t, _ in import_statements(m) if _imports_taps(t)}) for m in pages}
    offenders = {m: found for m, found in offenders.items() if found}
    assert not offenders, f"read through the Launcher or a workbench module instead of taps: {offenders}"
    # the check sees lazy imports inside functions
    assert "taps.inference" in {t for t, _ in import_statements("workbench.task_packs")}


def test_analysis_notebooks_import_the_workbench_not_the_taps_library():
    notebooks = {p.stem: p for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert LIBRARY_NOTEBOOKS <= set(notebooks)
    offenders = {}
    for stem, path in notebooks.items():
        if stem in LIBRARY_NOTEBOOKS:
            continue
        if found := _taps_imports_in(ast.parse(_notebook_code(path), str(path))):
            offenders[stem] = found
    assert {"02_analysis", "03_lambda_explorer"} <= set(notebooks) and not offenders, f"read through the workbench instead of taps: {offenders}"
    assert sorted(_taps_imports_in(ast.parse("def f():\n    import taps.data as d\nfrom taps import adapt\nimport tapsy"))) \
        == ["taps", "taps.data"]  # the check finds what it looks for, and only that
