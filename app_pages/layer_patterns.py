"""Layer patterns: which layers each run made task-specific, runs as rows and layers from input
to head as columns (paper Fig. 3/5/6); transformers get a row of layer types (Fig. 4)."""
from __future__ import annotations

import streamlit as st

from workbench import figures, ui
from workbench.summaries import layer_patterns, plural, run_label

launcher = ui.launcher()
st.title("Layer patterns")
st.caption("A filled cell is a layer the run gave a task-specific delta; an empty one is shared with the "
           "pretrained base. Compare tasks, or one task across λ.")

# Only finished runs: an unfinished run's scores still start above τ (every layer on), so its row
# would look like a final choice and empty the "shared by every run" count.
runs = [r for r in launcher.list_runs(status="done") if r.get("layer_names")]
unfinished = len(launcher.list_runs(status=("queued", "running")))
if unfinished:
    st.caption(f"Left out until they finish: {plural(unfinished, 'run')} still queued or training.")
if not runs:
    st.info("No run has finished yet: a run's layer pattern appears here when it has. Launch one on the Launch page.")
    st.stop()

backbones = list(dict.fromkeys(r["backbone"] for r in runs))
backbone = st.selectbox("Backbone (layers are compared within one backbone)", backbones)
candidates = [r for r in runs if r["backbone"] == backbone]
by_id = {r["id"]: r for r in candidates}
# Default: the newest run; when it belongs to a sweep, that sweep's runs ordered by λ (a pattern
# thinning as λ grows).
newest_sweep = candidates[0].get("sweep")
default = [r["id"] for r in sorted((r for r in candidates if r.get("sweep") == newest_sweep),
                                   key=lambda r: (r.get("method") != "taps", r.get("lam") or 0))] \
    if newest_sweep else [candidates[0]["id"]]
chosen = st.multiselect("Runs", list(by_id), default=default,
                        format_func=lambda i: f"{run_label(by_id[i])} · {by_id[i]['dataset']} · {i}")
if not chosen:
    st.info("Choose one or more runs.")
    st.stop()

rows, names, kinds, threshold = layer_patterns(launcher, [by_id[i] for i in chosen])
if not rows:
    st.info("These runs have not recorded a training step yet.")
    st.stop()
st.plotly_chart(figures.layer_patterns_figure(rows, names, layer_kinds=kinds, threshold=threshold, title=None),
                key="patterns_chart")

counts = [sum(r["scores"][i] >= threshold for r in rows) for i in range(len(names))]
always = [names[i] for i, c in enumerate(counts) if c == len(rows)]
never = [names[i] for i, c in enumerate(counts) if c == 0]
c1, c2 = st.columns(2)
c1.metric("layers task-specific in every chosen run", len(always))
c2.metric("layers shared by every chosen run", len(never))
with st.expander("Per layer"):
    st.dataframe([{"layer": i, "name": n, "type": kinds[i] if kinds else "", "task-specific in": f"{c} / {len(rows)}"}
                  for i, (n, c) in enumerate(zip(names, counts))], hide_index=True, width="stretch")
