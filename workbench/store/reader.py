"""The reads of recorded events that summaries and the live view need. A ``Launcher`` offers
them (pages and notebooks read through it) and so does a ``RunStore`` (tools and tests)."""
from __future__ import annotations

from typing import Protocol


class RunReader(Protocol):
    def steps_since(self, run_id: str, after_step: int = 0, limit: int | None = None, *,
                    with_scores: bool = False) -> list[dict]: ...

    def scores_matrix(self, run_id: str, after_step: int = 0, every: int = 1,
                      limit: int | None = None) -> tuple[list[int], list[list[float]]]: ...

    def epochs(self, run_id: str) -> list[dict]: ...

    def artifacts(self, run_id: str, kind: str | None = None) -> list[dict]: ...
