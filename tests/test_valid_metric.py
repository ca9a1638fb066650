"""`--valid-metric`: the validation metric early stopping and `tune` maximise, parsed, used and
recorded; one the validation set cannot give is refused before training."""

from __future__ import annotations

import orjson
import pytest
import torch

from batch_training.cli import train_main
from batch_training.config import TrainConfig
from batch_training.evaluate import GRU4RecScorer, evaluate_sampled, limit_history
from batch_training.pipeline import PipelineOptions, TrainingPipeline
from batch_training.splits import load_split
from batch_training.valid_metric import ValidMetric
from schemas.artifact import read_artifact

SLICE = ["--dataset", "movielens-100k", "--max-sessions", "60"]
QUICK = ["--preset", "quick", "--epochs", "1", "--quiet", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """--threads 1 sets it for the whole process; restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("text", "protocol", "name", "k", "shown"),
    [
        ("recall@20", "full", "recall", 20, "recall@20"),
        ("full:mrr@20", "full", "mrr", 20, "mrr@20"),
        ("hr@10", "sampled", "hr", 10, "sampled:hr@10"),
        (" Sampled:NDCG@5 ", "sampled", "ndcg", 5, "sampled:ndcg@5"),
    ],
)
def test_a_metric_is_read_as_protocol_name_and_cutoff(text, protocol, name, k, shown):
    metric = ValidMetric.parse(text)
    assert (metric.protocol, metric.name, metric.k) == (protocol, name, k)
    assert str(metric) == shown and ValidMetric.parse(str(metric)) == metric


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("full:hr@10", "expected one of"),  # hit rate is a sampled-protocol figure
        ("map@10", "expected one of"),
        ("ranked:recall@10", "expected one of"),
        ("recall", "K must be"),
        ("recall@0", "K must be"),
        ("recall@ten", "K must be"),
    ],
)
def test_a_metric_no_evaluation_reports_is_refused(text, why):
    with pytest.raises(ValueError, match=why):
        ValidMetric.parse(text)


def test_early_stopping_reads_the_chosen_metric_of_the_validation_set():
    split = load_split("movielens-100k", max_sessions=60)
    config = TrainConfig(layers=(16,), batch_size=16, n_sample=32, n_epochs=1)
    config = config.replace(sample_cache_size=4096, max_history=20)
    options = PipelineOptions(
        device="cpu",
        progress=False,
        validate=True,
        history_window=20,
        valid_metric=ValidMetric.parse("sampled:hr@10"),
    )
    pipeline = TrainingPipeline(split, config, options)
    result, _ = pipeline.train()
    # One epoch: the model holds that epoch's weights, whose validation figure is recorded.
    valid = limit_history(split.valid, 20)
    want = evaluate_sampled(GRU4RecScorer(result.model), valid, (10,), progress=False)["hr@10"]
    assert result.history[0]["valid"] == pytest.approx(want)
    assert TrainingPipeline(split, config, PipelineOptions()).valid_metric.key == "recall@20"


@pytest.mark.slow
def test_train_records_the_metric_it_stopped_on(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*SLICE, *QUICK, "--out", str(out), "--valid-metric", "sampled:ndcg@10"]
    assert train_main(argv) == 0
    metrics = orjson.loads((out / "metrics.json").read_bytes())
    assert metrics["valid_metric"] == "sampled:ndcg@10"
    manifest = read_artifact(out / "model").manifest
    assert manifest.metrics["valid_sampled:ndcg@10"] == metrics["history"][0]["valid"]
    assert "valid sampled:ndcg@10" in capsys.readouterr().out


def test_a_metric_the_validation_set_cannot_give_fails_before_training(tmp_path, capsys):
    out = tmp_path / "run"
    no_negatives = ["--split-option", "n_negatives=0"]
    argv = [*SLICE, *QUICK, *no_negatives, "--out", str(out), "--valid-metric", "hr@10"]
    assert train_main(argv) == 2
    assert "has no sampled negatives" in capsys.readouterr().err
    assert not out.exists()
    argv = [*SLICE, *QUICK, "--out", str(out), "--valid-metric", "hr@5", "--no-validation"]
    assert train_main(argv) == 2
    assert "nothing is validated" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: a usage error, before any data
        train_main([*SLICE, *QUICK, "--out", str(out), "--valid-metric", "full:hr@10"])
    assert exc.value.code == 2
    assert "expected one of" in capsys.readouterr().err


def test_a_preset_naming_a_metric_no_evaluation_reports_is_refused(tmp_path, monkeypatch, capsys):
    from batch_training import config as config_module

    presets = tmp_path / "presets"
    presets.mkdir()
    preset = {"config": {"layers": [8], "n_sample": 16}, "valid_metric": "map@3"}
    (presets / "odd.json").write_bytes(orjson.dumps(preset))
    monkeypatch.setattr(config_module, "PRESETS_DIR", presets)
    argv = [*SLICE, "--preset", "odd", "--out", str(tmp_path / "run"), "--quiet"]
    assert train_main(argv) == 2
    assert "preset odd: validation metric 'map@3'" in capsys.readouterr().err
