"""How event values are stored: numbers or NULL, JSON text, and per-layer scores as one
little-endian float32 blob per step."""
from __future__ import annotations

import json
import sys
from array import array
from dataclasses import fields, is_dataclass
from typing import Any, Iterable, Mapping

from .database import StoreError


def encode_scores(scores: Iterable[float]) -> bytes:
    a = array("f", scores)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def decode_scores(blob: bytes) -> list[float]:
    a = array("f")
    a.frombytes(blob)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tolist()


def event_dict(event: Any) -> dict:
    """A dataclass event (taps.training.trainer.StepEvent …) or a mapping, as a shallow dict copy."""
    if is_dataclass(event) and not isinstance(event, type):
        return {f.name: getattr(event, f.name) for f in fields(event)}
    if isinstance(event, Mapping):
        return dict(event)
    raise TypeError(f"expected a taps.training.trainer event dataclass or a dict, got {type(event).__name__}")


def optional_float(v: Any) -> float | None:
    return None if v is None else float(v)


def optional_int(v: Any) -> int | None:
    return None if v is None else int(v)


def to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serializable: {e}") from e
