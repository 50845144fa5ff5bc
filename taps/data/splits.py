"""Reproducible splits: carving val and test from train (stratified), class-balanced subsets,
each drawn from its own seeded random stream, and the checks every split must pass."""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .manifests import DEFAULT_TEST_FRACTION

TEST_SEED = 0  # test splits and test subsets never depend on the run's seed

# Independent random streams, so changing e.g. train_subset never moves the val split.
_STREAM_TEST, _STREAM_VAL, _STREAM_TRAIN_SUBSET, _STREAM_VAL_SUBSET, _STREAM_TEST_SUBSET = range(5)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _groups(labels: np.ndarray, positions: np.ndarray) -> list[np.ndarray]:
    """positions grouped by class (classes in increasing order, positions in given order)."""
    order = np.argsort(labels[positions], kind="stable")
    ps = positions[order]
    _, starts = np.unique(labels[ps], return_index=True)
    return np.split(ps, starts[1:]) if len(ps) else []


def _carve(labels, positions, fraction, rng) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: about `fraction` of each class (≥ 1 if the class has ≥ 2) is carved off."""
    keep, carved = [positions[:0]], [positions[:0]]
    for g in _groups(labels, positions):
        g = rng.permutation(g)
        k = min(max(int(fraction * len(g) + 0.5), 1), len(g) - 1) if len(g) >= 2 else 0
        carved.append(g[:k])
        keep.append(g[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(carved))


def _balanced(labels, positions, n, rng) -> np.ndarray:
    """n positions, class-balanced: classes take turns (in a seeded order) until n are taken."""
    if n >= len(positions):
        return positions
    groups = _groups(labels, positions)
    turn = rng.permutation(len(groups))
    members = np.concatenate([rng.permutation(g) for g in groups])
    rank = np.concatenate([np.arange(len(g)) * len(groups) + turn[i] for i, g in enumerate(groups)])
    return np.sort(members[np.argsort(rank, kind="stable")[:n]])


def plan_splits(m, pools, *, classes, val_fraction, seed, train_subset, test_subset=None
                ) -> dict[str, tuple[str, np.ndarray]]:
    """role -> (pool name, positions in that pool), refusing splits a run cannot use."""
    sp = m["splits"]
    train_pool = sp["train"]
    y = pools[train_pool].labels
    train = np.arange(len(y))
    if sp["test"] == "carve":
        train, test = _carve(y, train, sp.get("test_fraction", DEFAULT_TEST_FRACTION),
                             _rng(TEST_SEED, _STREAM_TEST))
        test = (train_pool, test)
    else:
        test = (sp["test"], np.arange(len(pools[sp["test"]].labels)))
    if sp["val"] == "carve":
        train, val = _carve(y, train, val_fraction, _rng(seed, _STREAM_VAL))
        val = (train_pool, val)
    else:
        val = (sp["val"], np.arange(len(pools[sp["val"]].labels)))
    _check_splits(m, pools, classes, {"train": (train_pool, train), "val": val, "test": test}, train_subset)
    if train_subset is not None:
        train = _balanced(y, train, train_subset, _rng(seed, _STREAM_TRAIN_SUBSET))
    if test_subset is not None:
        val = (val[0], _balanced(pools[val[0]].labels, val[1], test_subset, _rng(seed, _STREAM_VAL_SUBSET)))
        test = (test[0], _balanced(pools[test[0]].labels, test[1], test_subset,
                                   _rng(TEST_SEED, _STREAM_TEST_SUBSET)))
    return {"train": (train_pool, train), "val": val, "test": test}


def _check_splits(m, pools, classes, plan, train_subset) -> None:
    """What every dataset needs, checked where its splits are made (before the subsets): two
    classes at least, each with an image in train, val and test, and as many training images
    as ``train_subset`` asks for. Anything less trains "successfully" and means nothing."""
    if len(classes) < 2:
        raise ConfigError(f"{m['name']} has {len(classes)} class ({', '.join(map(repr, classes))}); a "
                          "classification task needs at least two classes.")
    carved = any(m["splits"][r] == "carve" for r in ("val", "test"))
    for role, (pool, positions) in plan.items():
        counts = np.bincount(pools[pool].labels[positions], minlength=len(classes))
        missing = [classes[i] for i in np.flatnonzero(counts == 0)]
        if missing:
            hint = " (carving val and test from train takes at least 3 images a class)" if carved else ""
            raise ConfigError(f"{m['name']}: class(es) {', '.join(map(repr, missing[:5]))} have no image in the "
                              f"{role} split; every class needs at least one image in train, val and test{hint}.")
    available = len(plan["train"][1])
    if train_subset is not None and train_subset > available:
        raise ConfigError(f"train_subset must be ≤ {available}, got {train_subset}: {m['name']} has {available} "
                          f"training images{' once val and test are carved out' if carved else ''} "
                          "(leave it unset to use them all).")
