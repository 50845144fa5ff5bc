"""Following a running run cheaply: what a live view has read of it so far, read on from there.

A live page polls the store every second or so for as long as it is open. Reading a run from its
first step on every poll, and drawing every figure again, cost the dashboard's server ~45 % of a
core on a long run. :class:`LiveRun` reads only what was recorded since its last poll (new steps,
new score rows, new epochs), keeps a bounded, evenly thinned window of them for the curves and
the heatmap, and counts what changed, so a page redraws a figure only when its data moved.
:func:`poll_seconds` paces the polls by the run's own speed. No Streamlit here.
"""
from __future__ import annotations

import collections
import statistics
import time
from typing import Sequence

from .store import RunReader

__all__ = ["LiveRun", "FigureCache", "poll_seconds", "POLL_MIN_S", "POLL_MAX_S", "FIGURE_REFRESH_S"]

POLL_MIN_S = 1.0  # a faster poll shows nothing a reader could follow
POLL_MAX_S = 10.0  # a slower one makes a page look stuck
POLL_BEFORE_STEPS_S = 2.0  # loading data and weights: the first steps come in seconds
RECENT_STEPS = 50  # steps kept whole for the rate, the ETA and the newest values
FIGURE_REFRESH_S = 5.0  # a live figure is built again at most this often; its numbers move every poll


def poll_seconds(step_seconds: float | None) -> float:
    """How often to look for news of a run that takes ``step_seconds`` a step: about once a step,
    within [POLL_MIN_S, POLL_MAX_S]; POLL_BEFORE_STEPS_S before its step time is known."""
    if not step_seconds or step_seconds != step_seconds:
        return POLL_BEFORE_STEPS_S
    return min(POLL_MAX_S, max(POLL_MIN_S, float(step_seconds)))


def _stride(total_steps: int | None, points: int) -> int:
    """Keep every n-th step so that a whole run fits in ``points`` columns. Fixed per run (its
    total is known from its start), so each poll keeps the same steps a full read would."""
    return max(1, -(-(total_steps or 1) // points))


class LiveRun:
    """One run as a live view has read it. :meth:`poll` reads what is new and returns whether
    anything was; ``curve_steps``, ``heatmap_steps`` / ``heatmap_scores``, ``epochs`` and
    ``recent_steps`` are what to draw; ``version`` says which figure's data changed since a
    figure was last built (compare with the version it was built from)."""

    def __init__(self, runs: RunReader, run_id: str, *, curve_points: int = 600, heatmap_columns: int = 300):
        self.runs, self.run_id = runs, run_id
        self.curve_points, self.heatmap_columns = curve_points, heatmap_columns
        self.version = {"steps": 0, "epochs": 0, "scores": 0}
        self._reset(None)

    def _reset(self, run: dict | None) -> None:
        run = run or {}
        total_steps = run.get("total_steps")
        self.total_steps, self.started_at = total_steps, run.get("started_at")
        self.curve_stride = _stride(total_steps, self.curve_points)
        self.heatmap_stride = _stride(total_steps, self.heatmap_columns)
        self.last_step = 0  # the newest step read
        self.last_scores_step = 0
        self._curve: list[dict] = []  # steps that are multiples of curve_stride
        self.recent_steps: collections.deque[dict] = collections.deque(maxlen=RECENT_STEPS)
        self._heat_steps: list[int] = []
        self._heat_scores: list[list[float]] = []
        self._newest_scores: tuple[int, list[float]] | None = None
        self.epochs: list[dict] = []
        for key in self.version:
            self.version[key] += 1

    def poll(self, run: dict) -> bool:
        """Read what ``run`` (the store's row, read by the caller) recorded since the last poll."""
        done_epochs = run.get("epochs_done") or 0
        # A start fixes the plan, and a resume (a new start time) rewrites steps from its epoch on: read anew.
        if (run.get("total_steps") != self.total_steps or run.get("started_at") != self.started_at
                or (run.get("last_step") or 0) < self.last_step or done_epochs < len(self.epochs)):
            self._reset(run)
        changed = False
        new_steps = self.runs.steps_since(self.run_id, self.last_step)
        if new_steps:
            self._curve.extend(s for s in new_steps if s["step"] % self.curve_stride == 0)
            self.recent_steps.extend(new_steps)
            self.last_step = new_steps[-1]["step"]
            self.version["steps"] += 1
            changed = True
        steps, scores = self.runs.scores_matrix(self.run_id, self.last_scores_step)
        if steps:
            for step, row in zip(steps, scores):
                if step % self.heatmap_stride == 0:
                    self._heat_steps.append(step)
                    self._heat_scores.append(row)
            self._newest_scores = (steps[-1], scores[-1])
            self.last_scores_step = steps[-1]
            self.version["scores"] += 1
            changed = True
        if done_epochs != len(self.epochs):
            self.epochs = self.runs.epochs(self.run_id)
            self.version["epochs"] += 1
            changed = True
        return changed

    @property
    def curve_steps(self) -> list[dict]:
        """Every curve_stride-th step and the newest: at most curve_points + 1, however long the run."""
        if self.recent_steps and (not self._curve or self._curve[-1]["step"] != self.last_step):
            return self._curve + [self.recent_steps[-1]]
        return list(self._curve)

    @property
    def heatmap_steps(self) -> list[int]:
        return self._heat_steps + self._newest_tail()[0]

    @property
    def heatmap_scores(self) -> list[list[float]]:
        return self._heat_scores + self._newest_tail()[1]

    def _newest_tail(self) -> tuple[list[int], list[list[float]]]:
        newest = self._newest_scores
        if newest is None or (self._heat_steps and self._heat_steps[-1] == newest[0]):
            return [], []
        return [newest[0]], [newest[1]]

    def step_seconds(self) -> float | None:
        """The run's recent seconds per step, from consecutive steps' timestamps (the step after an
        evaluation is left out); None until two such steps are in."""
        recent: Sequence[dict] = list(self.recent_steps)
        gaps = [b["t"] - a["t"] for a, b in zip(recent, recent[1:])
                if a.get("t") and b.get("t") and b["step"] == a["step"] + 1 and a.get("epoch") == b.get("epoch")]
        return statistics.median(gaps) if gaps else None


class FigureCache:
    """Figures by name, each built again only when its data moved (its ``version``) and then at
    most every ``refresh_s``; another ``identity`` (run, status, display mode) builds it at once.
    Building a Plotly figure costs about ten times what sending a built one does, and a page that
    re-sends an unchanged figure costs the browser nothing: Streamlit sends a reference to it."""

    def __init__(self, refresh_s: float = FIGURE_REFRESH_S, clock=time.monotonic):
        self.refresh_s, self.clock = refresh_s, clock
        self._held: dict[str, tuple] = {}
        self.builds = 0

    def get(self, name: str, identity: tuple, version, build):
        now = self.clock()
        held = self._held.get(name)
        if held is not None:
            held_identity, held_version, built_at, figure = held
            if held_identity == identity and (held_version == version or now - built_at < self.refresh_s):
                return figure
        figure = build()
        self.builds += 1
        self._held[name] = (identity, version, now, figure)
        return figure
