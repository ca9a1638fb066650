"""`gru4stream tune`: search spaces, the validation carve, pruning, and the command end to end
on a MovieLens-100K slice (a preset `train --preset` accepts, a resumed study, no test reads)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

optuna = pytest.importorskip("optuna")

from batch_training import config as config_module  # noqa: E402
from batch_training import pipeline, tune  # noqa: E402
from batch_training.cli import train_main  # noqa: E402
from batch_training.config import TrainConfig  # noqa: E402
from batch_training.sessions import DatasetSplit, EvalData, ItemVocab, SessionData  # noqa: E402
from batch_training.splits import load_split  # noqa: E402
from batch_training.tune_space import SpaceError, load_space  # noqa: E402
from schemas.events import DAY_MS  # noqa: E402

SLICE = ["--dataset", "movielens-100k", "--max-sessions", "30"]
# Small fixed sizes keep a trial to a second or two; the rest of the xe space is searched.
SMALL = ["--set", "layers=[32]", "--set", "n_sample=64", "--set", "batch_size=16", "--epochs", "2"]
SMALL += ["--set", "sample_cache_size=4096"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread, as the commands' --threads 1 sets for the whole process; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_space(tmp_path, params, fixed=None):
    path = tmp_path / "my-space.json"
    path.write_bytes(orjson.dumps({"fixed": fixed or {}, "params": params}))
    return str(path)


# --- search spaces ---------------------------------------------------------------------------


def test_the_default_spaces_are_the_authors_ranges():
    xe, bprmax = load_space("xe"), load_space("bprmax")
    ranges = {p.name: (p.low, p.high, p.step) for p in xe.params}
    assert ranges == {
        "layers": (64, 512, 32),
        "batch_size": (32, 256, 16),
        "learning_rate": (0.01, 0.25, 0.005),
        "dropout_p_embed": (0.0, 0.5, 0.05),
        "dropout_p_hidden": (0.0, 0.7, 0.05),
        "momentum": (0.0, 0.9, 0.05),
        "sample_alpha": (0.0, 1.0, 0.1),
    }
    assert xe.base().loss == "cross-entropy" and xe.base().logq == 1.0
    assert {p.name for p in bprmax.params} - set(ranges) == {"bpreg", "final_act", "elu_param"}
    assert bprmax.base().loss == "bpr-max"
    load_space("xe-wide")


def test_an_unknown_key_is_rejected_naming_the_key_and_the_file(tmp_path):
    path = write_space(tmp_path, {"hidden_size": {"type": "int", "low": 1, "high": 2}})
    with pytest.raises(SpaceError, match=r"my-space\.json.*'hidden_size'"):
        load_space(path)
    path = write_space(tmp_path, {"momentum": {"type": "float", "low": 0, "high": 0.5}}, {"lr": 1})
    with pytest.raises(SpaceError, match=r"my-space\.json.*'lr'"):
        load_space(path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"type": "float", "low": 0.0, "high": 1.0}, "dropout_p_hidden"),  # 1.0 is refused
        ({"type": "float", "low": 0.5, "high": 0.1}, "'low' <= 'high'"),
        ({"type": "float", "low": 0.0, "high": 0.5, "log": True}, "log range"),
        ({"type": "uniform", "low": 0.0, "high": 0.5}, "'type' one of"),
    ],
)
def test_a_range_the_trainer_would_refuse_fails_at_load(tmp_path, entry, message):
    with pytest.raises(SpaceError, match=message):
        load_space(write_space(tmp_path, {"dropout_p_hidden": entry}))


def test_a_trial_config_is_the_base_with_the_drawn_values():
    space = load_space("xe")
    trial = optuna.trial.FixedTrial(
        {
            "layers": 96,
            "batch_size": 48,
            "learning_rate": 0.1,
            "dropout_p_embed": 0.1,
            "dropout_p_hidden": 0.30000000000000004,
            "momentum": 0.0,
            "sample_alpha": 0.5,
        }
    )
    config = space.suggest(trial, space.base().replace(n_epochs=2))
    assert config.layers == (96,) and config.batch_size == 48 and config.n_epochs == 2
    assert config.dropout_p_hidden == 0.3  # Optuna's float steps, cleaned
    assert config.logq == 1.0  # fixed by the space


# --- the validation set ----------------------------------------------------------------------


def _log_split(n_sessions=10):
    """A session-log split without a validation set: session s starts on day s."""
    lengths = np.full(n_sessions, 3)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    starts = np.repeat(np.arange(n_sessions) * DAY_MS, 3) + np.tile([0, 1000, 2000], n_sessions)
    items = np.arange(3 * n_sessions) % 7
    train = SessionData(items, offsets, starts, np.arange(n_sessions).astype(object))
    vocab = ItemVocab(tuple(str(i) for i in range(7)))
    test = EvalData(train.select(np.array([0])), np.ones(1, np.int64), None)
    return DatasetSplit("log", vocab, train, None, test, {})


def test_without_a_validation_set_the_latest_training_sessions_validate():
    split = tune.tuning_split(_log_split(10), valid_days=2.5)
    assert split.valid.sessions.session_ids.tolist() == [7, 8, 9]
    assert split.train.session_ids.tolist() == list(range(7))
    assert split.item_support.sum() == 21
    with pytest.raises(tune.TestSplitAccess):
        split.test  # noqa: B018
    with pytest.raises(tune.CliError, match="valid-days"):
        tune.tuning_split(_log_split(10), valid_days=100)


def test_a_split_with_a_validation_set_keeps_it():
    split = load_split("movielens-100k", max_sessions=30)
    tuning = tune.tuning_split(split, valid_days=1.0)
    assert tuning.valid is split.valid and tuning.train is split.train


# --- pruning ---------------------------------------------------------------------------------


class PruneAll(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_a_trial_is_pruned_after_an_epoch_but_not_after_its_last():
    split = tune.tuning_split(load_split("movielens-100k", max_sessions=30), 1.0)
    space = load_space("xe")
    base = TrainConfig(layers=(16,), batch_size=16, n_sample=32, sample_cache_size=4096, n_epochs=3)
    space = space.without({"layers", "batch_size"})
    objective = tune.make_objective(split, space, base, device="cpu")
    study = optuna.create_study(direction="maximize", pruner=PruneAll())
    study.optimize(objective, n_trials=1)
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # stopped at once, not after 3 epochs

    # After the last epoch there is nothing left to save: the trial completes.
    objective = tune.make_objective(split, space, base.replace(n_epochs=1), device="cpu")
    study.optimize(objective, n_trials=1)
    assert study.trials[-1].state == optuna.trial.TrialState.COMPLETE

    # A point given to try (--start-from enqueues it) is the reference: never pruned.
    objective = tune.make_objective(split, space, base, device="cpu")
    study.enqueue_trial(study.trials[0].params, user_attrs={tune.START_FROM: "a preset"})
    study.optimize(objective, n_trials=1)
    assert study.trials[-1].state == optuna.trial.TrialState.COMPLETE
    assert list(study.trials[-1].intermediate_values) == [1, 2, 3]


# --- the command -----------------------------------------------------------------------------


class Guarded:
    """A split whose test part raises: what `tune` gets instead of the real split."""

    def __init__(self, split):
        self._split = split

    def __getattr__(self, name):
        if name == "test":
            raise AssertionError("gru4stream tune read the test split")
        return getattr(self._split, name)


@pytest.mark.slow
def test_tune_writes_a_preset_resumes_and_never_reads_the_test_split(tmp_path, monkeypatch):
    loaded = []

    def load_guarded(args):
        loaded.append(tune_load(args))
        return Guarded(loaded[-1])

    tune_load = tune.load_data
    monkeypatch.setattr(tune, "load_data", load_guarded)
    evaluated, interrupt_at = [], [3]  # the 3rd validation: trial #1, epoch 1
    real_evaluate = pipeline.evaluate_full

    def evaluate(scorer, data, *args, **kwargs):
        split = loaded[-1]
        assert data.sessions is split.valid.sessions and data is not split.test
        evaluated.append(data)
        if len(evaluated) == interrupt_at[0]:
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of a trial
        return real_evaluate(scorer, data, *args, **kwargs)

    monkeypatch.setattr(pipeline, "evaluate_full", evaluate)
    monkeypatch.setattr(config_module, "PRESETS_DIR", tmp_path / "presets")
    study_file = tmp_path / "study.sqlite"
    argv = [*SLICE, *SMALL, "--trials", "3", "--study", str(study_file), "--out", "tuned"]
    argv += ["--plot", str(tmp_path / "search.png"), "--threads", "1", "--quiet"]

    assert tune.main(argv) == 130  # interrupted; the best so far is written all the same
    study = optuna.load_study(study_name=tune.DEFAULT_STUDY_NAME, storage=f"sqlite:///{study_file}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL"]
    first = study.trials[0].params

    assert tune.main(argv) == 0  # the same command resumes
    study = optuna.load_study(study_name=tune.DEFAULT_STUDY_NAME, storage=f"sqlite:///{study_file}")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # 3 finished, not 3 more
    assert study.trials[0].params == first
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # no redraws
    assert len(evaluated) == 3 + 2 * 2  # every validation ran on the validation set

    preset = orjson.loads((tmp_path / "presets" / "tuned.json").read_bytes())
    assert preset["tuning"]["best_trial"] == study.best_trial.number
    assert preset["tuning"]["valid_recall@20"] == pytest.approx(study.best_value)
    assert "never read" in preset["source"]
    best = study.best_trial.params
    assert preset["config"]["learning_rate"] == pytest.approx(best["learning_rate"])
    assert preset["config"]["layers"] == [32] and preset["config"]["n_epochs"] == 2
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A different search in the same study is refused, not mixed in; a hand-written preset
    # is never replaced.
    assert tune.main([*argv, "--set", "n_sample=128"]) == 2
    (tmp_path / "presets" / "mine.json").write_bytes(b'{"config": {}}')
    assert tune.main(["mine" if a == "tuned" else a for a in argv]) == 2
    assert (tmp_path / "presets" / "mine.json").read_bytes() == b'{"config": {}}'

    monkeypatch.setattr(pipeline, "evaluate_full", real_evaluate)
    run = tmp_path / "run"
    train_argv = [*SLICE, "--preset", "tuned", "--device", "cpu", "--out", str(run)]
    assert train_main([*train_argv, "--quiet", "--threads", "1"]) == 0
    metrics = orjson.loads((run / "metrics.json").read_bytes())
    assert metrics["config"]["learning_rate"] == pytest.approx(best["learning_rate"])


def test_a_preset_can_be_the_first_point_tried_once_per_study(tmp_path):
    """--start-from PRESET enqueues the preset's values of the searched fields: they are the
    first trial, and resuming the study does not try them again."""
    from batch_training.config import load_preset

    xe = load_space("xe")
    want = xe.values_of(load_preset("leave-one-out-xe"), "here")
    assert want == {
        "layers": 128,
        "batch_size": 64,
        "learning_rate": 0.05,
        "dropout_p_embed": 0.2,
        "dropout_p_hidden": 0.2,
        "momentum": 0.4,
        "sample_alpha": 0.2,
    }
    off_grid = load_preset("leave-one-out-xe", learning_rate=0.0512)
    with pytest.raises(SpaceError, match="learning_rate=0.0512 is not in space xe"):
        xe.values_of(off_grid, "here")
    with pytest.raises(SpaceError, match="searches one layer"):
        xe.values_of(load_preset("leave-one-out-xe", layers=[64, 32]), "here")

    study_file = tmp_path / "study.sqlite"
    argv = [*SLICE, *SMALL, "--study", str(study_file), "--out", str(tmp_path / "best.json")]
    argv += ["--start-from", "leave-one-out-xe", "--threads", "1", "--quiet"]
    assert tune.main([*argv, "--trials", "1"]) == 0
    assert tune.main([*argv, "--trials", "2"]) == 0
    study = optuna.load_study(study_name=tune.DEFAULT_STUDY_NAME, storage=f"sqlite:///{study_file}")
    searched = {k: v for k, v in want.items() if k not in ("layers", "batch_size")}  # SMALL's
    assert study.trials[0].params == pytest.approx(searched)
    assert study.trials[0].user_attrs[tune.START_FROM] == "leave-one-out-xe"
    assert len(study.trials) == 2 and study.trials[1].params != study.trials[0].params
    assert tune.main([*argv, "--trials", "3", "--start-from", "no-such-preset"]) == 2


def test_the_start_from_point_runs_once_when_trials_run_in_parallel(tmp_path):
    """With --jobs 2, Optuna's threads could both take the enqueued --start-from trial from the
    SQLite study and the second to finish failed the search (optuna issue #4002): the queue
    now runs on one thread before the others start."""
    study_file = tmp_path / "study.sqlite"
    argv = [*SLICE, *SMALL, "--study", str(study_file), "--out", str(tmp_path / "best.json")]
    argv += ["--start-from", "leave-one-out-xe", "--threads", "1", "--quiet", "--jobs", "2"]
    assert tune.main([*argv, "--trials", "4"]) == 0
    study = optuna.load_study(study_name=tune.DEFAULT_STUDY_NAME, storage=f"sqlite:///{study_file}")
    states = [t.state for t in study.trials]
    assert len(states) == 4 and optuna.trial.TrialState.FAIL not in states
    started_from = [t for t in study.trials if tune.START_FROM in t.user_attrs]
    assert len(started_from) == 1 and started_from[0].number == 0
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4


def test_a_study_maximises_the_metric_it_is_given(tmp_path, monkeypatch, capsys):
    """--valid-metric: trials are scored on it, and the preset says which it was, so that
    `train --preset` stops on it too; a study made for one metric is not resumed for
    another."""
    monkeypatch.setattr(config_module, "PRESETS_DIR", tmp_path / "presets")
    study_file = tmp_path / "study.sqlite"
    argv = [*SLICE, *SMALL, "--trials", "1", "--study", str(study_file), "--out", "best"]
    argv += ["--threads", "1", "--quiet"]
    assert tune.main([*argv, "--valid-metric", "sampled:hr@10"]) == 0
    study = optuna.load_study(study_name=tune.DEFAULT_STUDY_NAME, storage=f"sqlite:///{study_file}")
    (trial,) = study.trials
    assert trial.user_attrs["metric"] == "sampled:hr@10"
    preset = orjson.loads((tmp_path / "presets" / "best.json").read_bytes())
    assert preset["valid_metric"] == "sampled:hr@10"
    assert preset["tuning"]["valid_sampled:hr@10"] == pytest.approx(trial.value)
    assert "validation sampled:hr@10" in preset["source"]
    train = [*SLICE, "--preset", "best", "--device", "cpu", "--quiet", "--threads", "1"]
    assert train_main([*train, "--out", str(tmp_path / "run")]) == 0
    metrics = orjson.loads((tmp_path / "run" / "metrics.json").read_bytes())
    assert metrics["valid_metric"] == "sampled:hr@10"
    given = ["--out", str(tmp_path / "run2"), "--valid-metric", "mrr@20"]  # the flag wins
    assert train_main([*train, *given]) == 0
    assert orjson.loads((tmp_path / "run2" / "metrics.json").read_bytes())["valid_metric"] == (
        "mrr@20"
    )
    assert tune.main([*argv, "--valid-metric", "mrr@20"]) == 2  # another search: refused
    assert "different" in capsys.readouterr().err

    no_negatives = ["--split-option", "n_negatives=0", "--valid-metric", "hr@10"]
    argv = [*SLICE, *SMALL, "--trials", "1", "--out", str(tmp_path / "x.json"), "--quiet"]
    assert tune.main([*argv, *no_negatives]) == 2
    assert "has no sampled negatives" in capsys.readouterr().err


def test_the_window_space_searches_the_history_window_mode_on_sampled_ndcg(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "PRESETS_DIR", tmp_path / "presets")
    argv = [*SLICE, "--space", "window-xe", "--trials", "2", "--epochs", "1", "--out", "win"]
    argv += ["--set", "layers=[16]", "--set", "max_history=5", "--threads", "1", "--quiet"]
    assert tune.main(argv) == 0
    preset = orjson.loads((tmp_path / "presets" / "win.json").read_bytes())
    config = preset["config"]
    assert (config["mode"], config["loss"], config["n_sample"]) == ("window", "cross-entropy", 0)
    # the window mode validates as ReChorus does: NDCG@5 among the sampled negatives
    assert 0 < preset["tuning"]["valid_sampled:ndcg@5"] < 1
    run = tmp_path / "run"
    train_argv = [*SLICE, "--preset", "win", "--device", "cpu", "--out", str(run)]
    assert train_main([*train_argv, "--quiet", "--threads", "1"]) == 0
    metrics = orjson.loads((run / "metrics.json").read_bytes())
    assert metrics["config"]["mode"] == "window"
    assert metrics["config"]["weight_decay"] == pytest.approx(config["weight_decay"])
