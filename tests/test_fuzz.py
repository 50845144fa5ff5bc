"""Fuzzing what comes from outside: random settings and random or damaged task packs get either a
working result or one clear error (a TAPSError / PackError naming the problem), never another
exception, and a pack that loads computes finite outputs. Derandomized and small, so it repeats
and runs in seconds."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import taps
from taps.backbones import create_backbone
from taps.errors import TAPSError
from taps.training.train_config import SETTINGS, TrainConfig
from taps.training.preflight import preflight
from tests.helpers import FAST_RUN, scramble

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------- settings

ODD_NUMBERS = st.one_of(st.integers(-10**13, 10**13), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from([0, 1, -1, 0.5, 1e-300, 2**63]))
ODD_VALUES = st.one_of(ODD_NUMBERS, st.booleans(), st.none(), st.text(max_size=12),
                       st.lists(ODD_NUMBERS, max_size=4), st.lists(st.text(max_size=6), max_size=3))
FIELDS = sorted(SETTINGS)
PLAUSIBLE = {  # values a careless user would type, beside the odd ones above
    "method": st.sampled_from(["taps", "finetune", "bn_only", "feature_extractor", "manual_freeze", "lora"]),
    "budget_pct": st.one_of(st.none(), st.floats(0, 120)),
    "budget_kind": st.sampled_from(["layers", "params", "bytes"]),
    "lam_path": st.lists(st.one_of(st.floats(-1, 10), st.just(math.nan)), max_size=4),
    "train_subset": st.one_of(st.none(), st.integers(-5, 3000)),
    "dataset": st.sampled_from(["digits", "fashion-mnst", "", "/nonexistent/folder"]),
    "backbone": st.sampled_from(["test_resnet", "resnet5O", ""]),
}


@st.composite
def settings_dicts(draw):
    changed = draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True))
    config = dict(FAST_RUN)
    for name in changed:
        strategy = PLAUSIBLE.get(name)
        config[name] = draw(st.one_of(strategy, ODD_VALUES) if strategy is not None else ODD_VALUES)
    return config


@FUZZ
@given(settings_dicts())
def test_random_settings_are_accepted_or_refused_with_one_clear_error(config):
    try:
        preflight(TrainConfig.from_dict(config))
    except TAPSError as exc:
        assert str(exc).strip() and "\n" not in str(exc).split(". How to get it")[0][:200]


# ------------------------------------------------------------------- task packs

@pytest.fixture(scope="module")
def pack_and_base(tmp_path_factory):
    base = create_backbone(FAST_RUN["backbone"], 3, weights="none")
    model = taps.adapt(copy.deepcopy(base))
    scramble(model)
    path = taps.save_pack(model, tmp_path_factory.mktemp("pack") / "task.safetensors", class_names=["a", "b", "c"])
    return path.read_bytes(), base


def _loads_or_refuses(path, base) -> None:
    """Either a PackError, or a model whose outputs are finite."""
    try:
        model = taps.load_pack(copy.deepcopy(base), path, check_base=False)
    except taps.PackError as exc:
        assert str(path) in str(exc)
        return
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(2, 3, 32, 32))).all()


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_are_refused_as_a_pack(tmp_path, data):
    path = tmp_path / "random.safetensors"
    path.write_bytes(data)
    with pytest.raises(taps.PackError, match=f"^{path}"):
        taps.read_pack(path)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**9), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**9)))
def test_a_pack_with_flipped_or_missing_bytes_loads_finite_or_is_refused(tmp_path, pack_and_base, flips, cut):
    good, base = pack_and_base
    data = bytearray(good)
    for where, bits in flips:
        data[where % len(data)] ^= bits
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(data[:cut % len(data)] if cut is not None else data))
    _loads_or_refuses(path, base)


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(), st.text(max_size=8)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                           max_leaves=6)


@FUZZ
@given(data=st.data())
def test_a_pack_with_edited_metadata_or_tensors_loads_finite_or_is_refused(tmp_path, pack_and_base, data):
    good, base = pack_and_base
    path = tmp_path / "edited.safetensors"
    path.write_bytes(good)
    pack = taps.read_pack(path)
    meta, tensors = json.loads(json.dumps(pack.metadata)), dict(pack.tensors)
    for key in data.draw(st.lists(st.sampled_from(sorted(meta)), max_size=2, unique=True)):
        meta[key] = data.draw(JSON_VALUES)
    for name in data.draw(st.lists(st.sampled_from(sorted(tensors)), max_size=2, unique=True)):
        shape = data.draw(st.lists(st.integers(0, 4), max_size=3))
        dtype = data.draw(st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool]))
        value = data.draw(st.sampled_from([0.0, 1.0, math.nan, math.inf]))
        tensors[name] = (torch.full(shape, value) if dtype.is_floating_point else torch.zeros(shape)).to(dtype)
    save_file(tensors, str(path), metadata={"taps": json.dumps(meta)})
    _loads_or_refuses(path, base)
