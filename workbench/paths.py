"""Which folders the dashboard may read when someone types a path into it.

The app binds to localhost, but a user may serve it to others (``--server.address 0.0.0.0``),
and then a typed path is input from anyone who can reach the page. So a path typed into the app
must lie inside the folders the person running it set up:

- the data folder (``$TAPS_DATA_ROOT``, default ``~/.cache/taps/data``); a relative path is
  read from there,
- the runs folder (``$TAPS_RUNS_DIR``, default ``./runs``),
- any folder listed in ``$TAPS_DATA_ROOTS`` (several separated by ``os.pathsep``, ``:`` on
  Linux and macOS).

``TAPS_ALLOW_ANY_PATH=1`` lifts the limit. ``..`` and symbolic links are resolved before the
check, so neither leads outside. The command line and the Python API are not limited: whoever
runs them already has a shell.
"""
from __future__ import annotations

import os
from pathlib import Path

from taps.errors import ConfigError

__all__ = ["ALLOW_ANY_PATH_ENV", "DATA_ROOTS_ENV", "PathNotAllowedError", "any_path_allowed", "allowed_roots",
           "resolve_typed", "check_allowed"]

ALLOW_ANY_PATH_ENV = "TAPS_ALLOW_ANY_PATH"
DATA_ROOTS_ENV = "TAPS_DATA_ROOTS"


class PathNotAllowedError(ConfigError):
    """A path typed into the app lies outside the folders it may read."""


def any_path_allowed() -> bool:
    return os.environ.get(ALLOW_ANY_PATH_ENV, "").strip().lower() in ("1", "true", "yes")


def _data_root() -> Path:
    from taps.data import default_data_root  # imports torch: only when a path is typed

    return default_data_root()


def allowed_roots(runs_root: str | os.PathLike) -> list[Path]:
    """The data folder, the runs folder and the folders of ``$TAPS_DATA_ROOTS``, resolved."""
    extra = [p for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    roots = [_data_root(), Path(runs_root), *map(Path, extra)]
    return list(dict.fromkeys(r.expanduser().resolve() for r in roots))


def resolve_typed(text: str) -> Path:
    """A typed path as an absolute, resolved path; a relative one is read from the data folder."""
    path = Path(text.strip()).expanduser()
    return (path if path.is_absolute() else _data_root() / path).resolve()


def check_allowed(path: str | os.PathLike, runs_root: str | os.PathLike) -> Path:
    """``path`` resolved, if the app may read it; else :class:`PathNotAllowedError` saying how
    to allow it."""
    resolved = resolve_typed(str(path))
    if any_path_allowed():
        return resolved
    roots = allowed_roots(runs_root)
    if any(resolved.is_relative_to(root) for root in roots):
        return resolved
    raise PathNotAllowedError(
        f"{path} is outside the folders this app may read ({', '.join(map(str, roots))}). Move the data into "
        f"the data folder {roots[0]}, or start the app with {DATA_ROOTS_ENV}={resolved} to allow that folder "
        f"({ALLOW_ANY_PATH_ENV}=1 allows any folder).")


def describe_allowed(runs_root: str | os.PathLike) -> str:
    """In words, for the dashboard's sidebar."""
    if any_path_allowed():
        return f"any folder ({ALLOW_ANY_PATH_ENV}=1)"
    return ", ".join(f"`{r}`" for r in allowed_roots(runs_root))
