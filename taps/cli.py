"""Command line: ``python -m taps train|eval|backbones|datasets``."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from tqdm import tqdm

from .errors import TAPSError, exit_code_of
from .method.packs import PackError
from .training.train_config import GROUP_TITLES, GROUPS, SETTINGS, TrainConfig
from .training.trainer import EpochEvent, StartEvent, StepEvent, train


TRAIN_EXAMPLES = """examples:
  python -m taps train                                   # the defaults: Lite0 on hanzi, λ 0.3, 3 epochs
  python -m taps train --lam 1 --epochs 3 --out-dir runs/demo
  python -m taps train --method finetune --dataset fashion-mnist
  python -m taps train --budget-pct 25                   # at most 25 % task-specific layers
  python -m taps train --lam-path 0.1 0.3 1 3 --out-dir runs/path
  python -m taps train --dataset path/to/images          # one sub-folder per class
  python -m taps train --out-dir runs/demo --resume      # continue a killed run
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each flag's help; examples printed as written."""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, by its flat name (``lam`` → ``--lam``), listed by settings group,
    typed from the dataclass, described by the field's own documentation (``metadata["help"]``)
    and limited to its choices."""
    hints = {None: typing.get_type_hints(TrainConfig)} | {g: typing.get_type_hints(k) for g, k in GROUPS.items()}
    sections = {group: parser.add_argument_group(f"settings: {title}") for group, title in GROUP_TITLES.items()}
    for name, (group, f) in SETTINGS.items():
        flag = "--" + f.name.replace("_", "-")
        kind = hints[group][f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        choices = f.metadata.get("choices")
        # Optional[X] → X; but list[str] is itself the type (its args are the item type); a Literal is text.
        base = [kind] if typing.get_origin(kind) in (list, typing.Literal) else \
            [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
        section = sections[group]
        if base[0] is bool:
            section.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(base[0]) is list:
            item = typing.get_args(base[0])[0]
            metavar = {"tasks": "DATASET", "lam_path": "LAM"}.get(f.name, "PATTERN")
            section.add_argument(flag, nargs="*", type=item, default=default, metavar=metavar, help=text)
        else:
            kind = str if typing.get_origin(base[0]) is typing.Literal else base[0]
            section.add_argument(flag, type=kind, default=default, choices=choices, help=text,
                                 metavar=None if choices else f.name.upper())


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig that the flags of ``add_config_arguments`` describe."""
    return TrainConfig.from_flat({name: getattr(args, name) for name in SETTINGS})


class ConsoleProgress:
    """A tqdm bar inside each epoch (rate, ETA, loss, active layers) on a terminal; a line per
    epoch always. Off a terminal (a log file, a pipe) there is no bar."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None

    def on_start(self, e: StartEvent) -> None:
        print(f"device {e.device} · {len(e.layer_names)} gated layers · {len(e.classes)} classes · "
              f"train/val/test {e.train_size}/{e.val_size}/{e.test_size} · {e.total_steps} steps",
              file=self.stream, flush=True)
        self.steps_per_epoch = max(1, e.steps_per_epoch)

    def on_step(self, e: StepEvent) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.steps_per_epoch, initial=(e.step - 1) % self.steps_per_epoch,
                            desc=f"epoch {e.epoch + 1}", unit="step", file=self.stream, leave=False,
                            disable=not self.stream.isatty(), dynamic_ncols=True)
        self.bar.set_postfix_str(f"loss {e.loss:.3f} active {e.active_layers}/{len(e.scores)}", refresh=False)
        self.bar.update(1)

    def on_epoch(self, e: EpochEvent) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        print(f"epoch {e.epoch + 1}/{e.epochs} train_loss {e.train_loss:.3f} train_acc {e.train_acc:.3f} "
              f"val_acc {e.val_acc:.3f} test_acc {e.test_acc:.3f} task-specific layers "
              f"{e.task_specific_layers_pct:.1f}% additional params {e.additional_params_pct:.1f}% "
              f"({e.seconds:.0f}s)", file=self.stream, flush=True)


def _table(rows: list[tuple[str, object]]) -> str:
    width = max(len(k) for k, _ in rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)
    return "\n".join(f"{k:<{width}}  {fmt(v)}" for k, v in rows)


def _lam_rows(metrics: dict) -> list[tuple[str, object]]:
    """λ as the run used it (a budget run's is found in training, not the --lam it was given);
    none for a method without a penalty."""
    lam = metrics.get("lam")
    if lam is None:
        return []
    return [("λ found for the budget" if metrics.get("budget_pct") is not None else "λ", f"{lam:.4g}")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taps", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train one task (TAPS or a baseline)", formatter_class=_HelpFormatter,
                             description="Train one task: every setting of taps.training.trainer.TrainConfig is a flag.",
                             epilog=TRAIN_EXAMPLES)
    add_config_arguments(p_train)
    p_train.add_argument("--resume", action="store_true", help="continue from out_dir's checkpoint")
    p_eval = sub.add_parser("eval", help="accuracy of a task pack on a dataset")
    p_eval.add_argument("pack")
    p_eval.add_argument("--dataset", default=None, help="default: the pack's own dataset")
    p_eval.add_argument("--split", default="test", choices=["val", "test"])
    p_eval.add_argument("--eval-subset", type=int, default=None)
    p_eval.add_argument("--data-root", default=None)
    p_eval.add_argument("--device", default="auto")
    sub.add_parser("backbones", help="list backbones and whether their weights are available offline")
    sub.add_parser("datasets", help="list datasets and whether they are on this machine")
    return exit_code_of(_run, parser.parse_args(argv), (TAPSError, PackError))


def _run(args) -> int:
    if args.command == "train":
        result = train(config_from_args(args), [ConsoleProgress()], resume=args.resume)
        m = result.metrics
        print(_table([("status", result.status), ("epochs", result.epochs_done),
                      *_lam_rows(m), ("val accuracy", m["val_acc"]), ("test accuracy", m["test_acc"]),
                      ("task-specific layers", f"{m['active_layers']}/{m['gated_layers']} "
                                               f"({m['task_specific_layers_pct']:.1f}%)"),
                      ("additional params", f"{m['additional_params']:,} ({m['additional_params_pct']:.2f}%)"),
                      ("task pack", result.pack_path or "-")]))
        for task, path in result.task_packs.items():  # a joint run: each task's own numbers
            tm = m["tasks"][task]
            print(_table([("task", task), ("test accuracy", tm["test_acc"]),
                          ("task-specific layers", f"{tm['active_layers']}/{tm['gated_layers']}"),
                          ("task pack", path)]))
        if result.base_path:
            print(f"trained shared base: {result.base_path}")
    elif args.command == "eval":
        from .inference import evaluate_pack

        r = evaluate_pack(args.pack, args.dataset, split=args.split, eval_subset=args.eval_subset,
                          data_root=args.data_root, device=args.device)
        print(_table([(k, v) for k, v in r.items()]))
    elif args.command == "backbones":
        from .backbones import list_backbones

        for b in list_backbones():
            print(f"{b.name:<24} {'offline' if b.offline else 'download':<9} {b.source}")
    elif args.command == "datasets":
        from .data import list_datasets

        for d in list_datasets():
            print(f"{d.name:<26} {'available' if d.available else 'missing':<10} "
                  f"{'' if d.available else d.how_to_get.splitlines()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
