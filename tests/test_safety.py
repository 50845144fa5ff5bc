"""Safety: the app listens on localhost only, uploads are size-limited and decoded safely, typed
paths stay inside the data and runs folders unless the user allows more, and no code path
unpickles, evals or shells out with data from outside."""
from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import time
import tomllib
import zlib
from pathlib import Path

import pytest
from PIL import Image

import taps
from app_testing import app, assert_clean
from taps.data import MAX_UPLOAD_PIXELS, decode_image
from taps.errors import ConfigError, UnknownBackboneError
from taps.training.trainer import PACK, TrainConfig
from test_data import _png
from tests.helpers import FAST_RUN, tiny_resnet
from workbench import paths
from workbench.launcher import Launcher
from workbench.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
LAUNCH, PACKS = "app_pages/launch.py", "app_pages/task_packs.py"
MAX_UPLOAD_MB = 10


# ------------------------------------------------------------------- the server

def test_the_app_listens_on_localhost_and_limits_uploads_by_default():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB
    make_app = [line for line in (ROOT / "Makefile").read_text().splitlines() if "streamlit run" in line]
    assert make_app and all("--server.address localhost" in line for line in make_app)
    # Streamlit itself, started from the project folder, reads the same settings.
    shown = subprocess.run([sys.executable, "-c", "from streamlit import config as c; c.get_config_options(); "
                            "print(c.get_option('server.address'), c.get_option('server.maxUploadSize'))"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.stdout.split() == ["localhost", str(MAX_UPLOAD_MB)], shown.stderr


# ------------------------------------------------------------------- uploads

def _png_claiming(width: int, height: int) -> bytes:
    """A 1×1 PNG whose header claims ``width``×``height`` pixels (a decompression bomb's trick)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # the chunk's checksum
    return bytes(data)


@pytest.mark.parametrize("width, height, message", [
    (8000, 8000, f"the image is 8000×8000 pixels; at most {MAX_UPLOAD_PIXELS:,} are accepted"),
    (100_000, 100_000, "the image is too large to decode safely"),
])
def test_an_image_claiming_huge_dimensions_is_refused_from_its_header(width, height, message):
    bomb = _png_claiming(width, height)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        decode_image(bomb)
    assert time.perf_counter() - t0 < 0.5  # refused, not decoded


@pytest.fixture
def store_with_a_pack(tmp_path):
    """A runs folder holding one finished run and its task pack (no training needed)."""
    root = tmp_path / "runs"
    with RunStore(root) as store:
        run_id = store.create_run(TrainConfig.from_flat(**FAST_RUN).to_dict(), name="digits")
        store.mark_running(run_id, os.getpid(), None)
        pack = taps.save_pack(taps.adapt(tiny_resnet(10)), store.run_dir(run_id) / PACK,
                              class_names=[str(i) for i in range(10)], extra={"dataset": "digits", "resolution": 32})
        store.add_artifact(run_id, "pack", pack)
        store.finish(run_id, "done", metrics={"val_acc": 0.5, "test_acc": 0.5})
    return root


@pytest.mark.parametrize("name, data, message", [
    ("big.png", b"\0" * (MAX_UPLOAD_MB * 2**20 + 1), f"big.png is 10.0 MB; at most {MAX_UPLOAD_MB} MB are accepted"),
    ("bomb.png", _png_claiming(8000, 8000), "Reading bomb.png failed: the image is 8000×8000 pixels; at most"),
], ids=["too-large", "bomb"])
def test_an_upload_too_large_or_claiming_too_many_pixels_is_refused(store_with_a_pack, monkeypatch, name, data,
                                                                    message):
    at = app(store_with_a_pack, monkeypatch, PACKS)
    at.file_uploader[0].set_value((name, data, "image/png")).run()
    assert_clean(at)
    assert len(at.error) == 1 and message in at.error[0].value
    assert not at.success  # nothing was classified


# ------------------------------------------------------------------- typed paths

@pytest.fixture
def folders(tmp_path, monkeypatch):
    """A data folder with a dataset in it, a runs folder, and a folder outside both (reachable
    from the data folder through a symbolic link)."""
    data, runs, outside = tmp_path / "data", tmp_path / "runs", tmp_path / "outside"
    for folder in (data / "pets", runs, outside / "photos"):
        folder.mkdir(parents=True)
    (data / "escape").symlink_to(outside)
    monkeypatch.setenv("TAPS_DATA_ROOT", str(data))
    for name in (paths.DATA_ROOTS_ENV, paths.ALLOW_ANY_PATH_ENV):
        monkeypatch.delenv(name, raising=False)
    return {"data": data, "runs": runs, "outside": outside}


@pytest.mark.parametrize("typed, env, allowed_as", [
    ("{data}/pets", {}, "{data}/pets"),
    ("pets", {}, "{data}/pets"),  # a relative path is read from the data folder
    ("{runs}", {}, "{runs}"),
    ("{outside}/photos", {}, None),
    ("{data}/../outside/photos", {}, None),  # '..' is resolved first
    ("../outside/photos", {}, None),
    ("{data}/escape/photos", {}, None),  # so is a symbolic link
    ("/etc", {}, None),
    ("~", {}, None),
    ("{outside}/photos", {paths.DATA_ROOTS_ENV: "{runs}" + os.pathsep + "{outside}"}, "{outside}/photos"),
    ("{data}/escape/photos", {paths.DATA_ROOTS_ENV: "{outside}"}, "{outside}/photos"),
    ("/etc", {paths.ALLOW_ANY_PATH_ENV: "1"}, "/etc"),
])
def test_a_typed_path_must_stay_inside_the_data_and_runs_folders_unless_allowed(folders, monkeypatch, typed, env,
                                                                               allowed_as):
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**folders))
    typed = typed.format(**folders)
    if allowed_as is not None:
        assert paths.check_allowed(typed, folders["runs"]) == Path(allowed_as.format(**folders)).resolve()
        return
    with pytest.raises(paths.PathNotAllowedError) as err:
        paths.check_allowed(typed, folders["runs"])
    message = str(err.value)
    assert message.startswith(f"{typed} is outside the folders this app may read ({folders['data']}, "
                              f"{folders['runs']})")
    assert f"{paths.DATA_ROOTS_ENV}={paths.resolve_typed(typed)}" in message
    assert f"{paths.ALLOW_ANY_PATH_ENV}=1 allows any folder" in message


@pytest.mark.parametrize("name", ["local-dir:/etc", "hf-hub:timm/resnet18.a1_in1k", "../../etc/passwd",
                                  "/tmp/model.pth"])
def test_the_model_name_box_cannot_name_a_file_or_a_download(name):
    with pytest.raises(UnknownBackboneError, match=f"unknown backbone '{name}'"):
        Launcher.validate(dict(FAST_RUN, backbone=name))


def _type_a_folder(at, folder: Path):
    at.selectbox[1].set_value("a folder of images…").run()
    next(t for t in at.text_input if t.label == "Folder").set_value(str(folder)).run()
    return at


def test_the_launch_page_refuses_a_folder_outside_the_allowed_ones_and_launches_nothing(folders, monkeypatch):
    photos = folders["outside"] / "photos"
    at = _type_a_folder(app(folders["runs"], monkeypatch), photos)
    assert at.error[0].value.startswith(f"{photos} is outside the folders this app may read")
    at.button[0].click().run()
    assert_clean(at)
    assert f"Nothing was launched. Fix first: {photos} is outside the folders this app may read." in \
        at.error[-1].value
    assert RunStore(folders["runs"]).list_runs() == []


def test_the_launch_page_accepts_a_folder_the_user_allowed(folders, monkeypatch):
    photos = folders["outside"] / "photos"
    for c in ("cat", "dog"):
        for i in range(3):  # an image of each class for train, val and test
            _png(photos / c / f"{i}.png", "RGB")
    monkeypatch.setenv(paths.DATA_ROOTS_ENV, str(folders["outside"]))
    at = _type_a_folder(app(folders["runs"], monkeypatch), photos)
    assert not at.error
    next(n for n in at.number_input if n.label == "Training images (0: all)").set_value(0).run()
    assert f"`{folders['outside']}`" in " ".join(c.value for c in at.caption)  # the allowed folders are shown
    monkeypatch.setenv("TAPS_WORKER_STEP_DELAY", "5")  # the run is cancelled below, before it gets far
    at.button[0].click().run()
    assert_clean(at)
    launcher = Launcher(RunStore(folders["runs"]))
    (run,) = launcher.list_runs()
    try:
        assert run["config"]["data"]["dataset"] == str(photos)
    finally:
        launcher.cancel(run["id"], grace_s=1)


# ------------------------------------------------------------------- no eval, no pickle

SHIPPED = sorted([ROOT / "app.py", *(p for folder in ("taps", "workbench", "app_pages", "scripts", "benchmarks")
                                     for p in (ROOT / folder).rglob("*.py"))])
UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "jsonpickle"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def unsafe_calls(source: str) -> list[str]:
    """Calls that would run code or commands hidden in data: eval/exec, unpickling,
    ``torch.load`` without ``weights_only=True``, unsafe YAML, pickled numpy arrays, shells,
    raw HTML in the app."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNPICKLERS:
            found += [f"from {node.module} import {a.name}" for a in node.names if "load" in a.name.lower()
                      or "unpickler" in a.name.lower()]
        if not isinstance(node, ast.Call):
            continue
        name, keywords = _dotted(node.func), {k.arg: k.value for k in node.keywords}
        module, _, function = name.rpartition(".")
        if (name in ("eval", "exec", "compile", "__import__", "os.system", "os.popen", "yaml.load",
                     "yaml.unsafe_load", "yaml.full_load")
                or (module.split(".")[0] in UNPICKLERS and ("load" in function or function == "Unpickler"))
                or (name == "torch.load" and not _is_true(keywords.get("weights_only")))
                or (function == "load" and module in ("np", "numpy") and _is_true(keywords.get("allow_pickle")))
                or _is_true(keywords.get("shell")) or _is_true(keywords.get("unsafe_allow_html"))):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


@pytest.mark.parametrize("snippet", [
    "eval(text)", "exec(code)", "pickle.load(fh)", "pickle.loads(data)", "from pickle import loads",
    "torch.load(path)", "torch.load(path, weights_only=False)", "np.load(path, allow_pickle=True)",
    "yaml.load(text)", "subprocess.run(cmd, shell=True)", "os.system(cmd)", "joblib.load(path)",
    "st.markdown(name, unsafe_allow_html=True)",
])
def test_the_scan_recognises_each_unsafe_call(snippet):
    assert len(unsafe_calls(snippet)) == 1


def test_no_shipped_code_evals_unpickles_or_shells_out():
    assert len(SHIPPED) > 30
    found = {str(p.relative_to(ROOT)): unsafe_calls(p.read_text(encoding="utf-8")) for p in SHIPPED}
    assert {path: calls for path, calls in found.items() if calls} == {}
    # the safe forms are what the code uses
    for loader in ("weights.py", "checkpoints.py"):  # packaged weights, checkpoint files
        assert "weights_only=True" in (ROOT / "taps" / "backbones" / loader).read_text()
    assert "safe_open" in (ROOT / "taps" / "method" / "packs.py").read_text()
