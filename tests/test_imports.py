"""The dashboard process must not load torch just to read the run store; the library's modules
import each other one way only."""
import ast
import subprocess
import sys
from importlib.util import resolve_name
from pathlib import Path

TAPS = Path(__file__).resolve().parent.parent / "taps"


def test_store_and_errors_import_without_torch():
    code = "import sys, taps.errors, workbench.store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_library_names_resolve_lazily():
    import taps

    assert set(taps.__all__) >= {"adapt", "TAPSConfig", "save_pack", "load_pack", "merge", "sparsity_penalty"}
    assert all(getattr(taps, name) is not None for name in taps.__all__)


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but what is under ``if TYPE_CHECKING:`` (imports for type hints only,
    which never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _taps_imports() -> dict[str, list[tuple[str, list[str]]]]:
    """Per module of the taps package (dotted name), the taps modules it imports, anywhere in
    the file (an import inside a function closes a loop as surely as one at the top; imports for
    type hints only do not count), each with the names it takes from there."""
    modules = {}
    for path in TAPS.rglob("*.py"):
        parts = path.relative_to(TAPS.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if parts[-1] == "__init__" else name.rpartition(".")[0]
        found = []
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                base = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
                found.append((base, [a.name for a in node.names]))
            elif isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names]
        modules[name] = found
    known = set(modules)
    resolved = {}
    for name, found in modules.items():
        edges = []
        for base, names in found:
            # `from . import x` and `from .pkg import mod` import modules; `from .mod import f` a module's names
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in known] or ([base] if base in known else [])
            edges += [(t, [n for n in names if f"{base}.{n}" not in known]) for t in targets]
        resolved[name] = [(t, names) for t, names in edges if t != name]
    return resolved


def test_taps_modules_import_each_other_without_a_loop():
    graph = {m: sorted({t for t, _ in edges if not m.startswith(t + ".")}) for m, edges in _taps_imports().items()}
    assert "taps.trainer" in graph and "taps.tasks" in graph["taps.trainer"]  # the scan sees the package
    done, path = set(), []

    def visit(module):  # depth-first: meeting a module already on the path is a loop
        if module in path:
            raise AssertionError("import loop: " + " → ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for target in graph.get(module, []):
            visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_no_private_name_is_imported_from_another_taps_module():
    private = [f"{m} imports {n} from {t}" for m, edges in _taps_imports().items() for t, names in edges
               for n in names if n.startswith("_") and not n.startswith("__")]
    assert private == []
