"""Task packs: what each finished task adds to the shared base, on disk — its size against a
full fine-tuned copy, its metadata, a download, and a prediction on an uploaded image."""
from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from workbench import task_packs, ui
from workbench.summaries import pack_rows

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # also server.maxUploadSize in .streamlit/config.toml
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"]


@st.cache_data(max_entries=64, show_spinner=False)
def pack_contents(path: str, mtime: float, base_params: int) -> tuple[dict, dict]:
    """(metadata, what the pack costs): the library's ``pack_stats`` on the pack itself, read
    once per version of the file."""
    return task_packs.pack_summary(path, base_params)


@st.cache_resource(max_entries=4, show_spinner="Loading the base model and applying the pack…")
def task_model(path: str, mtime: float):
    return task_packs.load_pack_model(path)


def megabytes(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:.2f} MB"


launcher = ui.launcher()
st.title("Task packs")
st.caption("A pack holds only what a task adds to the frozen base: the deltas of its task-specific layers, "
           "its normalisation layers and its head. Apply it to the base to get the task's model.")

packs = pack_rows(launcher, launcher.list_runs(status="done"))
if not packs:
    st.info("No task packs yet: every finished run writes one.")
    st.stop()
st.dataframe([{k: v for k, v in p.items() if k != "path"} for p in packs], hide_index=True, width="stretch",
             placeholder=ui.MISSING,
             column_order=["name", "dataset", "backbone", "method", "λ", "test acc", "layers", "pack bytes",
                           "full model bytes", "% of full", "run_id"],
             column_config={"λ": st.column_config.NumberColumn(format="%g"),
                            "test acc": st.column_config.NumberColumn(format="%.3f"),
                            "pack bytes": st.column_config.NumberColumn(format="localized"),
                            "full model bytes": st.column_config.NumberColumn(format="localized"),
                            "% of full": st.column_config.NumberColumn(format="%.1f %%")})

by_path = {p["path"]: p for p in packs}  # a joint run has one pack per task
chosen = st.selectbox("Pack", list(by_path),
                      format_func=lambda k: f"{by_path[k]['name']} · {by_path[k]['dataset']} · {by_path[k]['run_id']}")
pack = by_path[chosen]
path = Path(chosen)
mtime = path.stat().st_mtime
contents = ui.attempt(lambda: pack_contents(str(path), mtime, pack["base params"] or 0), "Reading the pack")
if contents is None:
    st.stop()
meta, stats = contents

c1, c2, c3 = st.columns(3)
c1.metric("pack size", megabytes(pack["pack bytes"]))
c2.metric("full fine-tuned model", megabytes(pack["full model bytes"]))
c3.metric("task-specific layers", f"{stats['active_layers']} of {stats['gated_layers']}")
with open(path, "rb") as fh:
    st.download_button("Download the pack", fh.read(), file_name=f"{pack['run_id']}-{pack['dataset']}.taps.safetensors",
                       mime="application/octet-stream", icon=":material/download:")
with st.expander("Metadata"):
    st.json({k: v for k, v in meta.items() if k not in ("layer_shapes",)})

st.subheader("Try it on an image")
upload = st.file_uploader("An image", type=UPLOAD_TYPES,
                          help=f"At most {MAX_UPLOAD_BYTES // 2**20} MB. It is classified by the pack's model "
                               "with the preprocessing of its test split.")
if upload is not None:
    data = upload.getvalue()
    if len(data) > MAX_UPLOAD_BYTES:
        st.error(f"{upload.name} is {len(data) / 2**20:.1f} MB; at most {MAX_UPLOAD_BYTES // 2**20} MB are accepted.")
        st.stop()
    image = ui.attempt(lambda: task_packs.decode_upload(data), f"Reading {upload.name}")
    if image is None:
        st.stop()
    loaded = ui.attempt(lambda: task_model(str(path), mtime), "Loading the task model")
    if loaded is None:
        st.stop()
    model, task_pack = loaded
    top = task_packs.top_classes(model, task_pack, image, top_k=5)
    i1, i2 = st.columns([1, 2])
    i1.image(image, caption=upload.name, width="stretch")
    chart = go.Figure(go.Bar(x=[p for _, p in top][::-1], y=[c for c, _ in top][::-1], orientation="h",
                             text=[f"{p:.1%}" for _, p in top][::-1], textposition="auto"))
    chart.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title=f"top {len(top)} classes",
                        xaxis=dict(range=[0, 1], tickformat=".0%"))
    i2.plotly_chart(chart, key="prediction_chart")
    st.success(f"Predicted: **{top[0][0]}** ({top[0][1]:.1%})")
