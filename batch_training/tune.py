"""`gru4stream tune`: hyperparameter search with Optuna over a search space file.

    gru4stream tune --dataset movielens-100k --space xe --trials 30 --study ml.sqlite \
        --out ml100k-xe --plot tune.png

Each trial trains GRU4Rec through the training pipeline (batch_training.pipeline) with one
point of the space (batch_training.tune_space) and scores it on a validation set carved from
the training part of the split: the split's own validation set when it has one (leave-one-out:
each user's second-to-last item; `--split-option valid_days=N`), else the training sessions
that start in the last `--valid-days`. Trials see a `TuningSplit`, which has no test set: any
attempt to read it raises. After every epoch the trial reports its validation Recall@20 and
a median pruner may stop it. The study lives in an SQLite file, so an interrupted search
resumes where it stopped. At the end the best configuration is written as a preset
(`train --preset`, `retrain --preset`) and the search as a PNG.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from batch_training.cli_args import (
    CliError,
    add_overrides_argument,
    add_source_arguments,
    add_valid_metric_argument,
    load_data,
    run_command,
    setup_logging,
    setup_threads,
    source_description,
    write_json,
)
from batch_training.tune_space import SearchSpace, SpaceError, config_with, list_spaces, load_space
from batch_training.valid_metric import ValidMetric
from kafka_io.cli import redact_argv
from schemas.events import DAY_MS

if TYPE_CHECKING:  # optuna and torch load only once a command runs
    import optuna

    from batch_training.config import TrainConfig
    from batch_training.sessions import EvalData, ItemVocab, SessionData

log = logging.getLogger(__name__)

# The metric of trials that did not record one (pipeline.VALID_METRIC); each trial records
# the metric it maximised (`--valid-metric`, or the pipeline's default for its mode).
METRIC = "recall@20"
DEFAULT_STUDY_NAME = "gru4stream-tune"
# The user attribute naming the preset a trial's point came from (--start-from).
START_FROM = "start_from"
# Trials that must finish before the pruner compares; fewer would prune on noise.
PRUNER_STARTUP_TRIALS = 5


class TestSplitAccess(RuntimeError):
    """Raised when anything in a tuning run reaches for the test split."""


@dataclass(frozen=True)
class TuningSplit:
    """What a trial may see: the training sessions and a validation set carved from them.

    Has the attributes `TrainingPipeline` reads (train, valid, vocab, item_support); `test`
    raises, so tuning cannot select on the test split by accident.
    """

    name: str
    vocab: ItemVocab
    train: SessionData
    valid: EvalData
    how: str  # where the validation set came from, for the preset's source

    @cached_property
    def item_support(self) -> np.ndarray:
        return self.vocab.support(self.train)

    @property
    def test(self) -> Any:
        raise TestSplitAccess("tuning never reads the test split")


def tuning_split(split: Any, valid_days: float) -> TuningSplit:
    """The split's training part and validation set; carved by time when it has none."""
    if split.valid is not None:
        return TuningSplit(
            split.name, split.vocab, split.train, split.valid, "the split's own validation set"
        )
    from batch_training.sessions import EvalData

    train = split.train
    starts = train.timestamps[train.offsets[:-1]]
    cutoff = int(train.timestamps.max()) - int(round(valid_days * DAY_MS))
    late = starts >= cutoff
    if late.all() or not late.any():
        raise CliError(
            f"--valid-days {valid_days}: the training sessions starting in the last "
            f"{valid_days} day(s) are {'all' if late.any() else 'none'} of them; choose another"
        )
    valid = train.select(late)
    valid = valid.select(valid.lengths >= 2)  # a target needs one click before it
    if valid.n_sessions == 0:
        raise CliError(f"--valid-days {valid_days}: no session of 2 or more clicks to validate on")
    eval_from = np.ones(valid.n_sessions, dtype=np.int64)
    how = f"the training sessions starting in the last {valid_days:g} day(s)"
    return TuningSplit(
        split.name, split.vocab, train.select(~late), EvalData(valid, eval_from, None), how
    )


# --- one trial -------------------------------------------------------------------------------


def _pruning_pipeline(split: TuningSplit, config: TrainConfig, options: Any, trial: Any) -> Any:
    """A TrainingPipeline whose per-epoch validation reports to the trial and may prune it.

    train() calls the validator once per epoch and lets its exceptions through, so
    optuna.TrialPruned raised here ends training at once.
    """
    import optuna

    from batch_training.pipeline import TrainingPipeline

    class PruningPipeline(TrainingPipeline):
        def _validator(self) -> Callable[[Any], float] | None:
            validate = super()._validator()
            if validate is None:  # options.validate is set, and a TuningSplit has valid
                raise RuntimeError("tuning needs the pipeline's validator")
            epochs = itertools.count(1)

            def report(model: Any) -> float:
                value, epoch = validate(model), next(epochs)
                trial.report(value, epoch)
                # After the last epoch pruning saves nothing and would throw a full result away.
                # A point given to try (--start-from) runs to the end: it is the reference.
                given = START_FROM in trial.user_attrs
                if epoch < self.config.n_epochs and not given and trial.should_prune():
                    raise optuna.TrialPruned(f"{value:.4f} after epoch {epoch}")
                return value

            return report

    return PruningPipeline(split, config, options)


def make_objective(
    split: TuningSplit,
    space: SearchSpace,
    base: TrainConfig,
    *,
    device: str = "auto",
    history_window: int = 0,
    eval_batch_size: int = 256,
    valid_metric: ValidMetric | None = None,
) -> Callable[[optuna.Trial], float]:
    """The objective: train one point of the space, return its best validation metric
    (Recall@20 unless `valid_metric` names another; see pipeline.TrainingPipeline)."""
    from batch_training.pipeline import PipelineOptions

    options = PipelineOptions(
        device=device,
        progress=False,
        eval_progress=False,
        history_window=history_window,
        validate=True,
        eval_batch_size=eval_batch_size,
        valid_metric=valid_metric,
    )

    def objective(trial: optuna.Trial) -> float:
        config = space.suggest(trial, base)
        pipeline = _pruning_pipeline(split, config, options, trial)
        trial.set_user_attr("metric", str(pipeline.valid_metric))
        try:
            result, seconds = pipeline.train()
        except FloatingPointError as exc:  # a diverging learning rate: a failed point
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("epochs", len(result.history))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("train_seconds", round(seconds, 1))
        return max(h["valid"] for h in result.history)

    return objective


# --- the study -------------------------------------------------------------------------------


def open_study(
    path: Path | None, name: str, fingerprint: dict[str, Any], seed: int, prune: bool
) -> optuna.Study:
    """A new study, or the one already in `path` if it searched the same thing."""
    import optuna

    storage: Any = None
    n_before = 0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{path}")
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
        if name in existing:
            previous = existing[name].user_attrs.get("fingerprint")
            empty = existing[name].n_trials == 0  # e.g. killed before its first trial
            if previous != fingerprint and not empty:
                raise CliError(
                    f"study {name!r} in {path} searched something else "
                    f"({_difference(previous, fingerprint)}); "
                    "use a new --study file or --study-name"
                )
            n_before = existing[name].n_trials
    # Seeded by the trials already run, so a resumed study does not redraw the first points.
    sampler = optuna.samplers.TPESampler(seed=seed + n_before)
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=0)
        if prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize",
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    if n_before == 0:
        study.set_user_attr("fingerprint", fingerprint)
    return study


def _difference(previous: Any, current: dict[str, Any]) -> str:
    if not isinstance(previous, dict):
        return "no record of what"
    keys = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    return "different " + ", ".join(keys)


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count against a --trials budget: complete or pruned."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class ProgressLine:
    """One line per finished trial: number, outcome, best so far, time, parameters."""

    def __init__(self, target: int | None) -> None:
        self.t0 = time.perf_counter()
        self.target = target

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        metric = trial.user_attrs.get("metric", METRIC)
        done = len(finished(study))
        count = f"{done}/{self.target}" if self.target else str(done)
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else 0.0
        )
        if trial.state == TrialState.COMPLETE:
            outcome = f"{metric} {trial.value:.4f} ({trial.user_attrs.get('epochs')} epochs)"
        elif trial.state == TrialState.PRUNED:
            step = trial.last_step
            last = trial.intermediate_values.get(step) if step is not None else None
            outcome = (
                "pruned" if last is None else f"pruned after epoch {step} ({metric} {last:.4f})"
            )
        else:
            outcome = f"failed: {trial.user_attrs.get('error', trial.state.name.lower())}"
        try:
            best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:  # nothing complete yet
            best = "best -"
        params = " ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
        print(
            f"trial #{trial.number} [{count}] {outcome}  {best}  {seconds:.0f}s, "
            f"elapsed {time.perf_counter() - self.t0:.0f}s  {params}",
            flush=True,
        )


# --- outputs ---------------------------------------------------------------------------------


def best_preset(
    study: optuna.Study, space: SearchSpace, base: TrainConfig, details: dict[str, Any]
) -> dict[str, Any]:
    """The preset file's content: the best trial's config, and how it was found."""
    best = study.best_trial
    metric = best.user_attrs.get("metric", METRIC)
    config = config_with(base, best.params, where=f"trial {best.number}").to_dict()
    config.pop("notes")
    n_done, n_complete = len(finished(study)), len(complete(study))
    data = _described(details["data"])
    source = (
        f"gru4stream tune: space {space.name}, {n_done} trials ({n_complete} complete, "
        f"{n_done - n_complete} pruned) on {data}; best trial #{best.number}: validation "
        f"{metric} {best.value:.4f} at epoch {best.user_attrs.get('best_epoch')}; validation set: "
        f"{details['validation']} (the test split was never read)"
    )
    return {
        "source": source,
        "notes": "Tuned on a validation set carved from training data; report test metrics "
        "from `gru4stream train --preset` on this config, not the validation figure.",
        "config": config,
        "tuning": {
            **details,
            "space": space.name,
            "best_trial": best.number,
            f"valid_{metric}": best.value,
            "best_epoch": best.user_attrs.get("best_epoch"),
            "trials_finished": n_done,
            "trials_pruned": n_done - n_complete,
        },
    }


def _described(data: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in data.items() if v is not None)


def preset_path(out: str) -> Path:
    """`--out`: a name becomes batch_training/presets/NAME.json, which `--preset NAME` reads;
    anything with a directory or a .json suffix is a path."""
    from batch_training import config

    if out.endswith(".json") or "/" in out:
        return Path(out)
    return config.PRESETS_DIR / f"{out}.json"


def plot_search(study: optuna.Study, path: Path) -> Path:
    """The search as a PNG: the metric per trial with the best so far, and per parameter."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from optuna.trial import TrialState

    trials = finished(study)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    names = sorted({k for t in done for k in t.params})
    n_cols = 4
    n_rows = 1 + -(-len(names) // n_cols)
    fig = Figure(figsize=(12, 2.8 * n_rows), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n_rows, n_cols)
    ax = fig.add_subplot(grid[0, :])
    if done:
        ax.scatter([t.number for t in done], [t.value for t in done], label="complete")
        best, running = [], -np.inf
        for t in sorted(done, key=lambda t: t.number):
            running = max(running, t.value)
            best.append((t.number, running))
        ax.step(*zip(*best, strict=True), where="post", color="tab:green", label="best so far")
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter([t.number for t in pruned], last, marker="x", color="gray", label="pruned")
    metric = done[0].user_attrs.get("metric", METRIC) if done else METRIC
    ax.set(title=f"validation {metric} per trial", xlabel="trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right")
    for k, name in enumerate(names):
        sub = fig.add_subplot(grid[1 + k // n_cols, k % n_cols])
        points = [(t.params[name], t.value) for t in done if name in t.params]
        x = [str(v) if isinstance(v, str | bool) else v for v, _ in points]
        sub.scatter(x, [v for _, v in points], s=12)
        sub.set(xlabel=name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# --- the command -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gru4stream tune",
        description="Search GRU4Rec hyperparameters with Optuna on a validation set carved "
        "from the training data; write the best as a preset.",
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--space",
        default="xe",
        help=f"a space in batch_training/spaces ({', '.join(list_spaces())}) "
        "or a JSON file (default: xe, the authors' cross-entropy space)",
    )
    budget = parser.add_argument_group("budget (at least one)")
    budget.add_argument("--trials", type=int, help="finished trials the study should reach")
    budget.add_argument("--minutes", type=float, help="stop starting trials after this long")
    parser.add_argument(
        "--study",
        type=Path,
        help="SQLite file of the study; resumed if it holds it already "
        "(default: in memory, not resumable)",
    )
    parser.add_argument("--study-name", default=DEFAULT_STUDY_NAME)
    parser.add_argument(
        "--out",
        required=True,
        help="the best config as a preset: NAME (written to "
        "batch_training/presets/NAME.json, for --preset NAME) or a .json path",
    )
    parser.add_argument("--plot", type=Path, help="a PNG of the search")
    parser.add_argument("--jobs", type=int, default=1, help="trials in parallel (threads)")
    add_overrides_argument(
        parser,
        "fix a config field for every trial (repeatable); a searched field is then "
        "no longer searched",
    )
    parser.add_argument("--epochs", type=int, help="override n_epochs (the most per trial)")
    parser.add_argument(
        "--valid-days",
        type=float,
        default=1.0,
        help="when the split has no validation set: "
        "the training sessions starting in the last N days validate (default 1)",
    )
    parser.add_argument(
        "--start-from",
        metavar="PRESET",
        help="try this preset's values of the searched fields first (once per study): the "
        "search starts from a known configuration",
    )
    parser.add_argument("--no-prune", action="store_true", help="run every trial to its end")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--history-window", type=int, default=None)
    add_valid_metric_argument(parser)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--quiet", action="store_true", help="only the progress lines")
    return parser


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int | None,
    minutes: float | None,
    jobs: int,
    target: int | None,
) -> None:
    """Run up to `n_trials` trials within `minutes`, `jobs` at a time; queued ones first.

    With a database storage two of Optuna's threads can take the same enqueued trial: both
    train it, and the second to finish fails the whole search on reporting it (optuna issue
    #4002; seen here with --start-from and --jobs 2). So the queue (the --start-from point)
    runs on one thread before the others start.
    """
    from optuna.trial import TrialState

    progress = ProgressLine(target)
    deadline = None if minutes is None else time.monotonic() + minutes * 60

    def optimize(n: int | None, n_jobs: int) -> None:
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        study.optimize(
            objective,
            n_trials=n,
            timeout=timeout,
            n_jobs=n_jobs,
            catch=(FloatingPointError,),
            callbacks=[progress],
        )

    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if jobs > 1 and queued:
        first = queued if n_trials is None else min(queued, n_trials)
        optimize(first, 1)
        n_trials = None if n_trials is None else n_trials - first
        if n_trials == 0 or (deadline is not None and time.monotonic() >= deadline):
            return
    optimize(n_trials, jobs)


def _space_and_base(args: argparse.Namespace) -> tuple[SearchSpace, TrainConfig]:
    from batch_training.config import ConfigError, apply_overrides

    try:
        space = load_space(args.space)
        pairs = list(args.overrides)
        if args.epochs is not None:
            pairs.append(f"n_epochs={args.epochs}")
        base = apply_overrides(space.base(), pairs)
    except (SpaceError, ConfigError) as exc:
        raise CliError(str(exc)) from None
    fixed_here = {p.partition("=")[0].strip().replace("-", "_") for p in pairs}
    return space.without(fixed_here), base


def _tune(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.trials is None and args.minutes is None:
        raise CliError("give a budget: --trials N and/or --minutes M")
    if (args.trials is not None and args.trials < 1) or (args.minutes or 1) <= 0:
        raise CliError("--trials must be >= 1 and --minutes > 0")
    if args.jobs < 1:
        raise CliError(f"--jobs must be >= 1, got {args.jobs}")
    setup_logging(args.quiet)
    setup_threads(args.threads)
    space, base = _space_and_base(args)
    if not space.params:
        raise CliError("--set fixes every searched field: nothing left to search")
    out = preset_path(args.out)
    _check_replaceable(out)
    try:
        import optuna
    except ImportError:
        raise CliError("needs Optuna: pip install 'gru4stream[tune]'") from None

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # ProgressLine says it once
    split = tuning_split(load_data(args), args.valid_days)
    metric = args.valid_metric
    if metric is not None and metric.protocol == "sampled" and split.valid.negatives is None:
        raise CliError(
            f"--valid-metric {metric}: the validation set ({split.how}) has no sampled "
            "negatives; choose a full-ranking metric such as recall@20"
        )
    window = base.max_history if args.history_window is None else args.history_window
    details = {
        "data": source_description(args),
        "validation": split.how,
        "history_window": window,
    }
    fingerprint = {**details, "space": space.to_dict(), "fixed": _plain(base)}
    if args.valid_metric is not None:  # absent in studies made before the option
        fingerprint["valid_metric"] = str(args.valid_metric)
    study = open_study(args.study, args.study_name, fingerprint, args.seed, not args.no_prune)
    if args.start_from is not None:
        # Optuna runs enqueued points before sampling; an identical one already in the
        # study (a resumed search) is not enqueued again.
        study.enqueue_trial(
            _start_values(space, args.start_from),
            user_attrs={START_FROM: args.start_from},
            skip_if_exists=True,
        )
    n_done = len(finished(study))
    log.info(
        "%s: %d training sessions, %d validation targets (%s); %d trials already in the study",
        split.name,
        split.train.n_sessions,
        split.valid.n_targets,
        split.how,
        n_done,
    )
    remaining = None if args.trials is None else args.trials - n_done
    interrupted = False
    if remaining is not None and remaining <= 0:
        print(f"the study already has {n_done} finished trials (--trials {args.trials})")
    else:
        objective = make_objective(
            split,
            space,
            base,
            device=args.device,
            history_window=window,
            eval_batch_size=args.eval_batch_size,
            valid_metric=args.valid_metric,
        )
        try:
            run_trials(study, objective, remaining, args.minutes, args.jobs, args.trials)
        except KeyboardInterrupt:
            interrupted = True
    if not complete(study):
        print("gru4stream tune: no trial completed; nothing to write", flush=True)
        return 130 if interrupted else 1
    details["command"] = ["gru4stream", "tune", *redact_argv(argv)]
    if args.study is not None:
        details["study"] = {"file": str(args.study), "name": args.study_name}
    preset = best_preset(study, space, base, details)
    if args.valid_metric is not None:  # `train --preset` stops on it too
        preset["valid_metric"] = str(args.valid_metric)
    write_json(out, preset)
    best = study.best_trial
    metric = best.user_attrs.get("metric", METRIC)
    print(f"best trial #{best.number}: validation {metric} {best.value:.4f}")
    print(f"preset: {out}")
    if args.plot is not None:
        print(f"plot: {plot_search(study, args.plot)}")
    if interrupted:
        print("interrupted: run the same command again to resume the study", flush=True)
        return 130
    return 0


def _start_values(space: SearchSpace, preset: str) -> dict[str, Any]:
    """--start-from: the preset's values of the fields `space` searches."""
    from batch_training.config import ConfigError, load_preset

    try:
        return space.values_of(load_preset(preset), f"--start-from {preset}")
    except (ConfigError, SpaceError) as exc:
        raise CliError(str(exc)) from None


def _check_replaceable(out: Path) -> None:
    """Tuning may replace its own earlier result, never a hand-written preset."""
    if not out.exists():
        return
    try:
        written_by_tune = "tuning" in orjson.loads(out.read_bytes())
    except (orjson.JSONDecodeError, TypeError):
        written_by_tune = False
    if not written_by_tune:
        raise CliError(f"{out}: exists and was not written by tune; choose another --out")


def _plain(config: TrainConfig) -> dict[str, Any]:
    values = config.to_dict()
    values.pop("notes")
    return values


def main(argv: list[str] | None = None) -> int:
    return run_command(_tune, argv, "gru4stream tune")
