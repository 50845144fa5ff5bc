"""Launch: backbone, dataset, method and λ → a run (or a λ sweep) in background processes."""
from __future__ import annotations

import math
import socket
from dataclasses import asdict
from pathlib import Path

import streamlit as st

from workbench import catalogue, paths, ui
from workbench.summaries import (comparable_run, estimate_run, format_duration, measured_run_timing, planned_steps,
                                 run_to_follow, sweep_seconds)

METHOD_LABELS = {
    "taps": "TAPS (learn which layers to adapt)",
    "finetune": "Full fine-tuning (every layer)",
    "feature_extractor": "Feature extractor (head only)",
    "bn_only": "BN + head",
    "manual_freeze": "Manual freeze (last k layers)",
    "joint": "Joint TAPS (several datasets at once, paper Eq. 4)",
}
SPARSITY_MODES = {"λ": "λ", "budget": "a budget", "path": "λ path (frontier in one run)"}
JOINT_DEFAULT = ["hanzi", "fashion-mnist"]  # two offline tasks with the default's 2,000 training images
OTHER_BACKBONE = "other…"
FOLDER_DATASET = "a folder of images…"


backbones = st.cache_data(ttl=60, show_spinner="Looking for backbones and their weights…")(catalogue.backbones)
datasets = st.cache_data(ttl=30, show_spinner=False)(catalogue.datasets)


# Where each number field's message goes. The boxes have no min/max of their own: Streamlit clamps an
# out-of-range entry silently (the box turned red, showed 1, and the old 64 px was launched), so
# TrainConfig.validate judges every value and its message is shown under the field it names.
field_notes: dict = {}


def number_field(where, label: str, field: str, value, **kwargs):
    """A number box for config ``field`` with a place under it for what validation says."""
    entered = where.number_input(label, value=value, **kwargs)
    field_notes[field] = where.empty()
    return entered


def config_problem(config: dict) -> str | None:
    """What validation says of ``config``, shown under its field; None when it is valid."""
    problem = catalogue.settings_problem(config)
    if problem is not None:
        field_notes.get(problem.field, st).error(str(problem))
        return str(problem)
    return None


def parse_lams(text: str) -> list[float]:
    """'0.1, 0.3 1' → [0.1, 0.3, 1.0]; a ValueError says which entry is wrong."""
    entries = [t for t in text.replace(",", " ").replace(";", " ").split() if t]
    if not entries:
        raise ValueError("enter at least one λ value (one value trains one run; several launch a sweep)")
    values = []
    for entry in entries:
        try:
            value = float(entry)
        except ValueError:
            raise ValueError(f"λ value {entry!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"λ must be a finite number ≥ 0 (0 means no sparsity pressure), got {entry}")
        values.append(value)
    return list(dict.fromkeys(values))


@st.cache_data(ttl=600, show_spinner=False)
def timed_step(backbone: str, resolution: int, batch_size: int, method: str, device: str, busy: bool,
               cache_file: str) -> dict:
    """This machine's step time for the setting (see workbench.calibration); ``cache_file`` is in
    the key so each cache folder (a test's, a user's) gets its own answer."""
    from workbench import calibration

    setting = calibration.ProbeSetting(backbone, resolution, batch_size, method, device)
    return asdict(calibration.step_timing(setting, busy=busy, path=Path(cache_file)))


@st.cache_data(max_entries=256, show_spinner=False)
def past_run_timing(run_id: str, finished_at: float) -> dict | None:
    """A finished run's measured step and start-up (it never changes: cached by id and end)."""
    return measured_run_timing(launcher.get(run_id), launcher.steps_since(run_id), launcher.epochs(run_id))


def run_time_text(config: dict, n_runs: int, slots: int, errors: list[str]) -> str:
    """How long the run (or sweep) takes here, from a training step timed on this machine and, when
    there is one, the newest finished run like it; every number is measured, none assumed."""
    if errors:
        return "How long it takes is shown once the settings are valid."
    from workbench import calibration

    tasks = max(1, len(config["tasks"]))
    try:
        with st.spinner(f"Timing a few training steps of {config['backbone']} at {config['resolution']} px "
                        "on this machine (once per setting)…"):
            timing = timed_step(config["backbone"], config["resolution"], config["batch_size"],
                                "taps" if config["tasks"] else config["method"], config["device"],
                                bool(launcher.list_runs(status="running")), str(calibration.cache_path()))
    except Exception as exc:  # noqa: BLE001 - a model that cannot be built here: say so, do not fail the page
        return f"How long a run takes is unknown: timing a training step failed ({exc})."
    host = socket.gethostname()
    past = next((r for r in launcher.list_runs(status="done", limit=200) if comparable_run(r, config, host)),
                None)
    past_timing = past_run_timing(past["id"], past["finished_at"]) if past else None
    epochs = catalogue.planned_epochs(config)
    train_images = config["train_subset"]
    if not train_images:
        return "How long a run takes is shown when the number of training images is set (0 trains on all of them)."
    estimate = estimate_run(
        steps=planned_steps(train_images, config["batch_size"], epochs), epochs=epochs,
        eval_images=config["eval_subset"] or 0, step_s=timing["step_s"], eval_image_s=timing["eval_image_s"],
        tasks=tasks, past=past_timing)
    source = ("this machine's last run like it" if estimate.from_past_run
              else f"a training step timed on this machine ({estimate.step_s:.2f} s)")
    left_out = ([] if estimate.includes_startup else ["loading data and model"]) + (
        [] if config["eval_subset"] else ["evaluating every validation and test image"])
    text = (f"About **{format_duration(estimate.seconds)} per run** ({estimate.steps:,} steps), from {source}"
            + (f", plus {' and '.join(left_out)}" if left_out else "") + ".")
    if n_runs > 1:
        total = sweep_seconds(estimate.seconds, n_runs, slots)
        text += f" {n_runs} runs, {slots} at a time: about **{format_duration(total)}** in all."
    return text


launcher = ui.launcher()
defaults = catalogue.default_settings()
st.title("Launch a run")
st.caption("TAPS fine-tunes a pretrained backbone for a new task while learning *which* layers need a "
           "task-specific change; λ is the price of each such layer. The default task, 50 handwriting-style "
           "Chinese characters, trains entirely offline; the estimate below says how long on this machine.")

errors: list[str] = []
left, right = st.columns(2, gap="large")

with left:
    st.subheader("Model and data")
    infos = {b["name"]: b for b in backbones()}
    names = list(infos) + [OTHER_BACKBONE]
    backbone = st.selectbox(
        "Backbone", names, index=names.index(defaults["backbone"]) if defaults["backbone"] in names else 0,
        format_func=lambda n: n if n == OTHER_BACKBONE else
        f"{n} · {infos[n]['params_m']:g} M params · " + ("weights offline ✓" if infos[n]["offline"] else "needs weights"),
        help="Pretrained ImageNet backbones. Those marked 'weights offline' start with no network.")
    if backbone == OTHER_BACKBONE:
        backbone = st.text_input("Model name", placeholder="any timm model, or tv_<torchvision model>").strip()
        if not backbone:
            errors.append("type a backbone name")
    elif not infos[backbone]["offline"]:
        st.warning(f"No pretrained weights for {backbone} on this machine: {infos[backbone]['how_to_get']}")

    data_infos = {d["name"]: d for d in datasets()}
    data_names = list(data_infos) + [FOLDER_DATASET]
    dataset = st.selectbox(
        "Dataset", data_names, index=data_names.index(defaults["dataset"]) if defaults["dataset"] in data_names else 0,
        format_func=lambda n: n if n == FOLDER_DATASET else
        f"{data_infos[n]['title']} · {data_infos[n]['num_classes']} classes · "
        + ("on this machine ✓" if data_infos[n]["available"] else "not here"),
        help="Datasets with a manifest in data_manifests/, or any folder with one sub-folder per class.")
    if dataset == FOLDER_DATASET:
        typed = st.text_input("Folder", placeholder="/path/to/images (one sub-folder per class)",
                              help="Inside the data folder (a relative path is read from there), the runs "
                                   f"folder, or a folder listed in ${paths.DATA_ROOTS_ENV}.").strip()
        st.caption(f"Folders the app may read: {paths.describe_allowed(launcher.root)}")
        dataset = typed
        if not typed:
            errors.append("type the path of an image folder")
        elif not paths.resolve_typed(typed).is_dir():
            st.error(f"No folder at {typed}.")
            errors.append(f"no folder at {typed}")
        else:
            try:
                dataset = str(paths.check_allowed(typed, launcher.root))
            except paths.PathNotAllowedError as exc:
                st.error(str(exc))
                errors.append(f"{typed} is outside the folders this app may read")
    elif not data_infos[dataset]["available"]:
        st.warning(f"{data_infos[dataset]['title']} is not on this machine. {data_infos[dataset]['how_to_get']}")
    method = st.selectbox("Method", list(METHOD_LABELS), format_func=METHOD_LABELS.get,
                          help="TAPS, or one of the baselines it is compared with, or TAPS on several "
                               "tasks at once with a shared, trained base.")
    tasks: list[str] = []
    if method == "joint":
        available = [n for n, d in data_infos.items() if d["available"]]
        tasks = st.multiselect("Datasets trained together", list(data_infos),
                               default=[d for d in JOINT_DEFAULT if d in available],
                               format_func=lambda n: data_infos[n]["title"],
                               help="Each step sees a batch of every task; each task keeps its own deltas, "
                                    "scores, normalisation and head.")
        if len(tasks) < 2:
            st.error("Choose at least two datasets for joint training.")
            errors.append("choose at least two datasets for joint training")

with right:
    st.subheader("Training")
    lams: list[float] = []
    baselines = False
    extra: dict = {}
    sparsity = "λ"
    if method == "taps":
        sparsity = st.radio("Sparsity set by", list(SPARSITY_MODES), horizontal=True,
                            format_func=SPARSITY_MODES.get, help=(
                                "λ: the price of each task-specific layer. Budget: say what a task may cost, "
                                "the trainer finds λ. λ path: the whole frontier from one run, λ rising in "
                                "stages, a task pack per stage."))
    if sparsity == "budget":
        b1, b2 = st.columns(2)
        extra["budget_pct"] = float(number_field(b1, "Budget (%)", "budget_pct", 25.0, step=5.0,
                                                     help="The run ends at or under this."))
        extra["budget_kind"] = b2.radio("of", ["layers", "params"], horizontal=True, format_func={
            "layers": "task-specific layers", "params": "additional parameters"}.get)
    elif sparsity == "path":
        p1, p2 = st.columns([2, 1])
        path_text = p1.text_input("λ stages (increasing)", value="0, 0.3, 1, 3",
                                  help="Stage 1 trains the epochs below at the first λ; every later stage "
                                       "continues from it at the next λ.")
        stage_epochs = number_field(p2, "Epochs per later stage", "path_stage_epochs", 1)
        try:
            path = parse_lams(path_text)
            if len(path) < 2 or path != sorted(path):
                raise ValueError("a λ path needs at least two λ values, in increasing order")
            extra.update(lam_path=path, path_stage_epochs=int(stage_epochs))
        except ValueError as exc:
            st.error(str(exc))
            errors.append(str(exc))
    elif method in ("taps", "joint"):
        lam_text = st.text_input("λ (sparsity)", value=f"{defaults['lam']:g}",
                                 help="One value trains one run. Several (e.g. 0.1, 0.3, 1, 3) launch a "
                                      "sweep: one run each, compared on the Frontier page.")
        try:
            lams = parse_lams(lam_text)
        except ValueError as exc:
            st.error(str(exc))
            errors.append(str(exc))
        if len(lams) > 1 and method == "taps":
            baselines = st.checkbox("Add baselines to the sweep (full fine-tuning, feature extractor)", value=True)
    elif method == "manual_freeze":
        by = st.radio("Trainable layers", ["last k layers", "match a budget"], horizontal=True)
        if by == "last k layers":
            extra["freeze_layers"] = int(number_field(st, "k (trainable last layers)", "freeze_layers", 5))
        else:
            extra["freeze_budget_pct"] = float(number_field(st, "budget (% task-specific layers)", "freeze_budget_pct",
                                                           25.0))
    c1, c2 = st.columns(2)
    lr = number_field(c1, "Learning rate", "lr", float(defaults["lr"]), step=0.001, format="%.4f")
    epochs = number_field(c2, "Epochs", "epochs", int(defaults["epochs"]))
    batch_size = number_field(c1, "Batch size", "batch_size", int(defaults["batch_size"]))
    resolution = number_field(c2, "Resolution (px)", "resolution", int(defaults["resolution"]), step=16,
                              help="64 px keeps CPU runs short; the paper trains at 224.")
    train_subset = number_field(st, "Training images (0: all)", "train_subset", int(defaults["train_subset"] or 0),
                                step=500, help="A class-balanced subset of the training split.")
    with st.expander("Advanced"):
        a1, a2 = st.columns(2)
        threshold = number_field(a1, "Threshold τ", "threshold", float(defaults["threshold"]), step=0.01,
                                 format="%.3f", help="A layer is task-specific while its score is ≥ τ.")
        score_init = number_field(a2, "Score init", "score_init", float(defaults["score_init"]), step=0.01,
                                  format="%.3f", help="Scores start here: above τ, so every layer starts on.")
        score_lr = number_field(a1, "Score learning rate", "score_lr", float(defaults["score_lr"]), step=0.001,
                                format="%.4f")
        eval_subset = number_field(a2, "Evaluation images (0: all)", "eval_subset", int(defaults["eval_subset"] or 0),
                                   step=500)
        seed = number_field(a1, "Seed", "seed", int(defaults["seed"]))
        norm_choices = catalogue.setting_choices("norm_stats")
        norm_stats = a2.radio("BatchNorm statistics", norm_choices, horizontal=True,
                              index=norm_choices.index(defaults["norm_stats"]),
                              help="auto: frozen for pretrained weights, adapt for random ones; "
                                   "frozen: keep the pretrained running statistics (steadier on short runs); "
                                   "adapt: follow the task's batches, as in the paper.")
        penalty_mode = a1.radio("Penalty counts", ["layers", "params"], horizontal=True,
                                help="layers: every layer costs the same (the paper); params: a layer "
                                     "costs its share of the parameters.")
        device_choice = a2.text_input("Device", value="auto", help="auto picks the GPU when there is one.")
        recompute_weights = a1.checkbox("Save memory: recompute w̄ + δ", value=bool(defaults["recompute_weights"]),
                                        help="Compose each layer's weight again in the backward pass instead of "
                                             "keeping it: one weight-sized copy less, a few % more time.")

config = dict(defaults, backbone=backbone, dataset=tasks[0] if tasks else dataset,
              method="taps" if method == "joint" else method, tasks=tasks, lr=float(lr), epochs=int(epochs),
              batch_size=int(batch_size), resolution=int(resolution), train_subset=int(train_subset) or None,
              threshold=float(threshold), score_init=float(score_init), score_lr=float(score_lr) or None,
              eval_subset=int(eval_subset) or None, seed=int(seed), norm_stats=norm_stats,
              penalty_mode=penalty_mode, device=device_choice.strip() or "auto",
              recompute_weights=bool(recompute_weights), **extra)
if lams:
    config["lam"] = lams[0]
problem = config_problem(config)
if problem:
    errors.append(problem)
n_runs = (len(lams) + (2 if baselines else 0)) if method in ("taps", "joint") and len(lams) > 1 else 1

slots = launcher.max_concurrent
st.info(f"Trains on **{ui.device()}**. " + run_time_text(config, n_runs, slots, errors), icon=":material/schedule:")

label = f"Launch sweep ({n_runs} runs)" if n_runs > 1 else "Launch run"
if st.button(label, type="primary", icon=":material/play_arrow:"):
    if errors:
        st.error("Nothing was launched. Fix first: " + "; ".join(errors) + ".")
    else:
        with st.spinner("Checking the settings and queueing…"):
            if n_runs > 1:
                result = ui.attempt(lambda: launcher.sweep(config, lams, baselines=baselines)[1], "Launching the sweep")
            else:
                result = ui.attempt(lambda: [launcher.launch(config)], "Launching the run")
        if result:
            st.session_state["launched"] = len(result)
            ui.open_run(run_to_follow(launcher.list_runs(status=("running", "queued")), result))
