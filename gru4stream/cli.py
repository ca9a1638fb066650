"""`gru4stream SUBCOMMAND ...`: imports only the package the subcommand needs.

Each target is `module:function`, a function taking the remaining arguments and returning an
exit status, so `gru4stream worker` never loads torch training code and `gru4stream train`
never loads Faust.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("deploy.kafka.broker:main", "start, stop or inspect the local Kafka broker"),
    "produce": ("gru4stream.produce:main", "publish a dataset's clicks to a topic"),
    "topics": ("gru4stream.topics:main", "create the project's topics on a cluster"),
    "train": ("batch_training.cli_train:main", "train GRU4Rec and export an artifact"),
    "evaluate": ("batch_training.cli_evaluate:main", "evaluate an artifact or a baseline"),
    "tune": ("batch_training.tune:main", "search hyperparameters (Optuna), write a preset"),
    "publish": ("batch_training.publish:main", "announce a model version on model-updates"),
    "retrain": ("batch_training.retrain:main", "retrain from the archive, promote if not worse"),
    "worker": ("stream_app.cli:worker_main", "run the streaming recommendation worker"),
    "replay": ("stream_app.replay:main", "replay archived clicks through served models"),
    "demo": ("gru4stream.demo:main", "broker + training + worker + live stream, end to end"),
}


def _usage() -> str:
    lines = ["usage: gru4stream SUBCOMMAND [ARGS...]", "", "subcommands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines.append("\n`gru4stream SUBCOMMAND --help` for the options of one.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"gru4stream: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = SUBCOMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
