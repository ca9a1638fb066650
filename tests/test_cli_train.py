"""`gru4stream train` / `gru4stream evaluate` end to end on a MovieLens-100K slice."""

from __future__ import annotations

import shutil

import orjson
import pytest
import torch

from batch_training.cli import evaluate_main, train_main
from schemas.artifact import MANIFEST, WEIGHTS, read_artifact

SLICE = ["--dataset", "movielens-100k", "--max-sessions", "300"]


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """The commands below run with --threads 1, which sets it for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    argv = [*SLICE, "--preset", "quick", "--epochs", "2", "--device", "cpu"]
    argv += ["--out", str(out), "--version", "ml100k-test", "--quiet", "--threads", "1"]
    assert train_main(argv) == 0
    return out


def read_json(path):
    return orjson.loads(path.read_bytes())


def evaluate_json(tmp_path, *argv) -> dict:
    out = tmp_path / "eval.json"
    assert evaluate_main([*argv, *SLICE, "--json", str(out), "--quiet", "--threads", "1"]) == 0
    return read_json(out)


@pytest.mark.slow
def test_train_exports_a_verified_artifact_with_its_metrics(run_dir):
    artifact = read_artifact(run_dir / "model")
    metrics = read_json(run_dir / "metrics.json")
    assert artifact.version == "ml100k-test"
    assert artifact.manifest.metrics["test_full"] == metrics["test"]["full"]
    assert artifact.manifest.metrics["test_sampled"]["n_examples"] == 300
    data = artifact.manifest.training_data
    assert data["source"] == {"dataset": "movielens-100k", "max_sessions": 300}
    assert data["first_timestamp"] < data["last_timestamp"]
    assert metrics["epochs_run"] == len(metrics["history"]) == 2
    assert metrics["config"]["n_epochs"] == 2
    assert (run_dir / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_trained_model_beats_most_popular_under_the_same_protocol(run_dir, tmp_path):
    model = read_json(run_dir / "metrics.json")["test"]
    pop = evaluate_json(tmp_path, "--baseline", "pop")["results"]
    assert pop["full"]["n_examples"] == model["full"]["n_examples"] == 300
    # seeds 1, 7, 42 give 0.15-0.18 against 0.07 for popularity
    assert model["full"]["recall@20"] >= 1.5 * pop["full"]["recall@20"]
    assert model["sampled"]["hr@10"] > pop["sampled"]["hr@10"]


@pytest.mark.slow
def test_evaluating_the_artifact_reproduces_the_training_metrics(run_dir, tmp_path):
    trained = read_json(run_dir / "metrics.json")["test"]
    served = evaluate_json(tmp_path, "--model", str(run_dir), "--protocol", "both")
    assert served["version"] == "ml100k-test"
    assert "unknown" not in served  # same data, same vocabulary
    for protocol in ("full", "sampled"):
        for name, value in trained[protocol].items():
            if name != "seconds":
                assert served["results"][protocol][name] == pytest.approx(value), name


@pytest.mark.slow
def test_items_unknown_to_the_model_are_skipped_and_counted(run_dir, tmp_path):
    out = tmp_path / "wider.json"
    argv = ["--model", str(run_dir / "model"), "--dataset", "movielens-100k"]
    argv += ["--max-sessions", "600", "--protocol", "full", "--json", str(out), "--quiet"]
    assert evaluate_main(argv) == 0
    got = read_json(out)
    unknown = got["unknown"]
    assert unknown["unknown_clicks"] > 0  # users 301-600 rated films the first 300 did not
    assert got["results"]["full"]["n_examples"] == 600 - unknown["unknown_targets"]


def test_missing_artifact_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert evaluate_main(["--model", str(missing), *SLICE]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such directory" in err
    (tmp_path / "empty").mkdir()
    assert evaluate_main(["--model", str(tmp_path / "empty"), *SLICE]) == 2
    assert "no manifest" in capsys.readouterr().err


@pytest.mark.slow
def test_corrupt_artifacts_are_refused_with_the_reason(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "model", broken)
    (broken / MANIFEST).write_text("{not json")
    assert evaluate_main(["--model", str(broken), *SLICE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "manifest.json" in err and "not valid JSON" in err

    tampered = tmp_path / "tampered"
    shutil.copytree(run_dir / "model", tampered)
    with open(tampered / WEIGHTS, "ab") as f:
        f.write(b"\0")
    assert evaluate_main(["--model", str(tampered), *SLICE]) == 2
    err = capsys.readouterr().err
    assert "weights.npz" in err and "does not match" in err


def test_bad_train_arguments_fail_before_training(tmp_path, capsys):
    base = ["--preset", "quick", "--out", str(tmp_path / "run"), "--quiet"]
    assert train_main(["--dataset", "no-such-data", *base]) == 2
    assert "unknown dataset 'no-such-data'" in capsys.readouterr().err
    assert train_main([*SLICE, *base, "--set", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert train_main([*SLICE, *base, "--set", "batch_size=big"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert train_main([*SLICE, *base[:2], "--preset", "nope", *base[2:]]) == 2
    assert "no preset 'nope'" in capsys.readouterr().err
    assert train_main(["--file", str(tmp_path / "none.csv"), *base]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert train_main([*SLICE, *base]) == 2
    assert "already exists" in capsys.readouterr().err


def test_sampled_protocol_without_negatives_is_refused(tmp_path, capsys):
    argv = ["--baseline", "pop", *SLICE, "--split-option", "n_negatives=0"]
    assert evaluate_main([*argv, "--protocol", "sampled", "--quiet"]) == 2
    assert "needs given negatives" in capsys.readouterr().err


SAMPLE_SPLIT = ["--split-option", "test_days=30", "--split-option", "min_item_support=2"]
SAMPLE_SPLIT += ["--split-option", "n_negatives=0"]
QUICK = ["--preset", "quick", "--epochs", "1", "--quiet", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory):
    """The Diginetica raw-log sample as a generic CSV event file."""
    from readers.registry import iter_events

    path = tmp_path_factory.mktemp("events") / "clicks.csv"
    lines = ["session_id,item_id,timestamp"]
    lines += [f"{e.session_id},{e.item_id},{e.timestamp}" for e in iter_events("diginetica-sample")]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_train_from_an_event_file(sample_csv, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(["--file", str(sample_csv), *SAMPLE_SPLIT, *QUICK, "--out", str(out)]) == 0
    manifest = read_artifact(out / "model").manifest
    assert manifest.training_data["source"]["file"] == str(sample_csv)
    assert manifest.training_data["n_events"] == 12_391  # every click of the file was read
    assert manifest.metrics["test_full"]["n_examples"] == 368
    assert "test_sampled" not in manifest.metrics  # no negatives asked for
    assert "recall@20" in capsys.readouterr().out


def test_a_malformed_event_file_names_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("session_id,item_id,timestamp\ns1,i1,1700000000000\ns1,i2,yesterday\n")
    assert train_main(["--file", str(bad), *QUICK, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv, line 3" in err and "yesterday" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.kafka
@pytest.mark.slow
def test_train_from_a_time_range_of_the_archive_topic(kafka_bootstrap, sample_csv, tmp_path):
    from gru4stream.produce import main as produce_main
    from tests.kafka_util import unique_topic

    topic = unique_topic("clicks")
    argv = ["--file", str(sample_csv), "--topic", topic, "--bootstrap", kafka_bootstrap]
    assert produce_main([*argv, "--time-mode", "keep", "--no-progress"]) == 0

    source = ["--topic", topic, "--bootstrap", kafka_bootstrap, *SAMPLE_SPLIT]
    out = tmp_path / "all"
    assert train_main([*source, *QUICK, "--out", str(out)]) == 0
    data = read_artifact(out / "model").manifest.training_data
    assert data["n_events"] == 12_391
    assert data["source"]["topic"] == topic

    # a window: only clicks before 2016-05-15 are read
    end = "2016-05-15T00:00:00Z"
    out = tmp_path / "window"
    assert train_main([*source, "--to", end, *QUICK, "--out", str(out)]) == 0
    data = read_artifact(out / "model").manifest.training_data
    assert 0 < data["n_events"] < 12_391
    assert data["last_timestamp"] < 1_463_270_400_000  # 2016-05-15T00:00Z in ms
