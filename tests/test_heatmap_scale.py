"""Issue 24: the score heatmap's colours show the scores a run has, centred on τ."""
from __future__ import annotations

import numpy as np

from workbench.figures import heatmap_figure


def test_score_colours_span_the_scores_that_occur_not_one_outlier():
    tau = 0.1
    scores = np.full((20, 10), 0.16)  # a λ = 0.1 run: every layer a little above τ…
    scores[:, 0] = np.linspace(0.12, 0.2, 20)
    scores[-1, -1] = 0.6  # …and one outlier, which used to set the range (0.1 ± 0.5: all near white)
    fig = heatmap_figure(list(range(1, 21)), scores.tolist(), [f"l{i}" for i in range(10)], threshold=tau)
    hm = fig.data[0]
    span = float(np.percentile(np.abs(scores - tau), 95))
    assert hm.zmid == tau and np.isclose(hm.zmax - tau, span) and np.isclose(tau - hm.zmin, span)
    assert 0.06 <= span < 0.07  # the typical score, 0.16, is near the end of the scale: full colour
    assert fig.layout.yaxis.tickfont.size == 11 and fig.layout.yaxis.tickfont.color == "#222"
