"""Command line: ``python -m workbench launch|list|show|cancel|resume|sweep``.

    python -m workbench launch --lam 0.5 --epochs 3 --name "λ=0.5"
    python -m workbench sweep --lams 0.1 1 10 --baselines --epochs 2
    python -m workbench list
    python -m workbench show RUN_ID
    python -m workbench cancel RUN_ID
    python -m workbench resume RUN_ID

Runs live in ``--runs-dir`` (default: $TAPS_RUNS_DIR, else ./runs). ``launch`` and ``sweep`` take
the same training flags as ``python -m taps train``. Runs go on in the background after this
command returns.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from taps.errors import TAPSError, exit_code_of

from .store import RunStore

_CONFIG_COMMANDS = ("launch", "sweep")


def _command_of(argv: list[str]) -> str | None:
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--runs-dir":
            skip = True
            continue
        if not a.startswith("-"):
            return a
    return None


def build_parser(with_config: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.split("\n")[0])
    parser.add_argument("--runs-dir", default=None, help="runs folder (default: $TAPS_RUNS_DIR, else ./runs)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    add_config = None
    if with_config:  # the training flags need the trainer (torch): only built when used
        from taps.cli import add_config_arguments as add_config

    cluster = argparse.ArgumentParser(add_help=False)
    cluster.add_argument("--backend", choices=["local", "ray"], default="local",
                         help="local processes (default), or Ray tasks (pip install .[cluster]); "
                              "with ray the command waits for its runs, which report into the store live")
    cluster.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")

    p = sub.add_parser("launch", parents=[common, cluster], help="queue one training run")
    p.add_argument("--name", default=None, help="a label for the run")
    if add_config:
        add_config(p)
    p = sub.add_parser("sweep", parents=[common, cluster], help="queue a grid of runs λ × lr × dataset")
    p.add_argument("--lams", type=float, nargs="+", required=True)
    p.add_argument("--lrs", type=float, nargs="+", default=None)
    p.add_argument("--datasets", nargs="+", default=None)
    p.add_argument("--baselines", action="store_true", help="also finetune and feature_extractor runs")
    p.add_argument("--name", default=None, help="the sweep's name (default: generated)")
    if add_config:
        add_config(p)
    p = sub.add_parser("list", parents=[common], help="the runs, newest first")
    p.add_argument("--status", default=None)
    p.add_argument("--sweep", default=None)
    p.add_argument("--limit", type=int, default=50)
    p = sub.add_parser("show", parents=[common], help="one run: its row, last epochs, log tail")
    p.add_argument("run_id")
    p.add_argument("--lines", type=int, default=20, help="log lines to show")
    p = sub.add_parser("cancel", parents=[common], help="cancel a queued or running run")
    p.add_argument("run_id")
    p.add_argument("--grace", type=float, default=10.0, help="seconds before the worker is killed")
    p = sub.add_parser("resume", parents=[common], help="queue a failed or cancelled run again")
    p.add_argument("run_id")
    return parser


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _run(args) -> int:
    from .launcher import Launcher

    store = RunStore(args.runs_dir)
    if getattr(args, "backend", "local") == "ray":
        from .ray_backend import RayLauncher

        launcher = RayLauncher(store, address=args.address)
    else:
        launcher = Launcher(store)
    if args.command in ("launch", "sweep"):
        from taps.cli import config_from_args  # imports torch: only for the commands that launch
    if args.command == "launch":
        run_ids = [launcher.launch(config_from_args(args), name=args.name)]
        print(run_ids[0])
    elif args.command == "sweep":
        sweep_id, run_ids = launcher.sweep(config_from_args(args), args.lams, args.lrs, args.datasets,
                                           baselines=args.baselines, name=args.name)
        print(f"sweep {sweep_id}: {len(run_ids)} runs")
        for r in run_ids:
            print(r)
    if args.command in ("launch", "sweep") and launcher.backend == "ray":
        # The store's writer actor lives with this process: stay until the cluster runs end.
        for run_id, status in launcher.wait(run_ids, timeout=float("inf")).items():
            print(f"{run_id}: {status}")
    elif args.command == "list":
        runs = launcher.list_runs(status=args.status, sweep=args.sweep, limit=args.limit)
        rows = []
        for r in runs:
            m = r.get("metrics") or {}
            progress = f"{r['last_step']}/{r['total_steps']}" if r.get("total_steps") else "-"
            rows.append([r["id"], r["status"], r.get("name"), r.get("sweep"), r.get("method"), r.get("dataset"),
                         r.get("lam"), r.get("lr"), progress, m.get("val_acc"), m.get("test_acc")])
        print(_table(["id", "status", "name", "sweep", "method", "dataset", "lam", "lr", "steps",
                      "val_acc", "test_acc"], rows) if rows else f"no runs in {store.root}")
    elif args.command == "show":
        run = launcher.get(args.run_id)
        if run is None:
            raise TAPSError(f"no run {args.run_id!r} in {store.root}")
        for key in ("id", "name", "sweep", "status", "method", "dataset", "backbone", "lam", "lr", "device",
                    "host", "pid", "created_at", "started_at", "finished_at", "last_step", "total_steps",
                    "epochs_done", "epochs", "error"):
            v = run.get(key)
            if key.endswith("_at") and v is not None:
                v = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))
            print(f"{key:<12} {_fmt(v)}")
        if run.get("metrics"):
            print(f"{'metrics':<12} {json.dumps(run['metrics'])}")
        epochs = store.epochs(args.run_id)[-5:]
        if epochs:
            print("\nlast epochs:")
            print(_table(["epoch", "train_loss", "train_acc", "val_acc", "test_acc", "layers%", "params%"],
                         [[e["epoch"] + 1, e["train_loss"], e["train_acc"], e["val_acc"], e["test_acc"],
                           e["task_specific_layers_pct"], e["additional_params_pct"]] for e in epochs]))
        log = store.run_dir(args.run_id) / "log.txt"
        if log.exists():
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-max(0, args.lines):]
            print(f"\nlog ({log}):")
            print("\n".join(lines))
    elif args.command == "cancel":
        print(f"{args.run_id}: {launcher.cancel(args.run_id, grace_s=args.grace)}")
    elif args.command == "resume":
        print(f"{args.run_id}: {launcher.resume(args.run_id)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_config=_command_of(argv) in _CONFIG_COMMANDS)
    return exit_code_of(_run, parser.parse_args(argv), (TAPSError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
