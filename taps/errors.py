"""Errors users see. Each message says what was wrong and what to do about it."""
from __future__ import annotations



class TAPSError(Exception):
    """Base class of the errors the library raises on bad input."""


class ConfigError(TAPSError, ValueError):
    """An invalid setting (λ < 0, lr ≤ 0, unknown method, absurd sizes…). ``field`` names the
    setting when there is one, so a form can show the message next to its field."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class UnknownBackboneError(TAPSError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsUnavailableError(TAPSError, RuntimeError):
    """Pretrained weights were asked for but cannot be had (offline, missing file…)."""


class UnknownDatasetError(TAPSError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DatasetUnavailableError(TAPSError, FileNotFoundError):
    """A known data set whose files are not on this machine; the message says how to get them."""


class TrainingError(TAPSError, RuntimeError):
    """Training cannot go on (NaN/inf loss…); the last good checkpoint is kept."""


class DiskFullError(TAPSError, OSError):
    """A file could not be written because its disk is full (or the user's quota is spent); the
    message names the file, and the previous version of it is intact."""

    def __str__(self) -> str:  # OSError would wrap the message in "[Errno 28] …: 'path'"
        return self.strerror or super().__str__()


def exit_code_of(command, args, errors: tuple[type[BaseException], ...] = (TAPSError,)) -> int:
    """Run a command-line ``command(args)``: bad input ends as one ``error: …`` line and exit
    code 2, Ctrl-C as 130 — never a traceback for a mistake the user can fix."""
    import sys

    try:
        return command(args)
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
