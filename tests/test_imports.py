"""The dashboard process must not load torch just to read the run store; the library's names
resolve lazily. (How modules import each other: test_architecture.py.)"""
import subprocess
import sys


def test_store_and_errors_import_without_torch():
    code = "import sys, taps.errors, workbench.store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_library_names_resolve_lazily():
    import taps

    assert set(taps.__all__) >= {"adapt", "TAPSConfig", "save_pack", "load_pack", "merge", "sparsity_penalty"}
    assert all(getattr(taps, name) is not None for name in taps.__all__)
