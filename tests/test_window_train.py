"""The `rechorus` preset's history-window mode end to end: `gru4stream train` on MovieLens-100K."""

from __future__ import annotations

import orjson
import pytest
import torch

from batch_training.cli import evaluate_main, train_main
from batch_training.config import load_preset
from schemas.artifact import read_artifact

DATA = ["--dataset", "movielens-100k", "--protocol", "both", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """The commands below run with --threads 1, which sets it for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("window") / "run"
    # a short run: 2 epochs, windows of 5 and a higher learning rate keep it near a minute
    argv = [*DATA, "--preset", "rechorus", "--epochs", "2", "--device", "cpu"]
    argv += ["--set", "max_history=5", "--set", "learning_rate=0.005"]
    assert train_main([*argv, "--out", str(out), "--version", "ml100k-window"]) == 0
    return out


def read_json(path):
    return orjson.loads(path.read_bytes())


def test_the_rechorus_preset_trains_in_the_window_mode():
    config = load_preset("rechorus")
    assert config.mode == "window" and config.max_history == 20 and config.n_sample == 1


@pytest.mark.slow
def test_a_short_window_run_beats_most_popular_by_a_wide_margin(run_dir, tmp_path):
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["config"]["mode"] == "window" and metrics["epochs_run"] == 2
    # early stopping ran on the validation NDCG@5 of the sampled protocol
    assert all(0 < h["valid"] < 1 for h in metrics["history"])
    model = metrics["test"]
    assert evaluate_main([*DATA, "--baseline", "pop", "--json", str(tmp_path / "pop.json")]) == 0
    pop = read_json(tmp_path / "pop.json")["results"]
    assert pop["sampled"]["n_examples"] == model["sampled"]["n_examples"] == 943
    # seed 42: HR@10 0.576 and NDCG@10 0.321 against 0.401 and 0.223 for popularity
    assert model["sampled"]["hr@10"] >= pop["sampled"]["hr@10"] + 0.10
    assert model["sampled"]["ndcg@10"] >= 1.25 * pop["sampled"]["ndcg@10"]


@pytest.mark.slow
def test_the_served_artifact_reproduces_the_training_metrics(run_dir, tmp_path):
    """The worker's one-step-per-click path over the folded artifact scores as trained."""
    artifact = read_artifact(run_dir / "model")
    assert artifact.manifest.input_kind == "embedding"
    assert artifact.manifest.hyperparameters["mode"] == "window"
    out = tmp_path / "eval.json"
    argv = ["--model", str(run_dir / "model"), *DATA, "--json", str(out)]  # window: max_history
    assert evaluate_main(argv) == 0
    served = read_json(out)["results"]["sampled"]
    trained = read_json(run_dir / "metrics.json")["test"]["sampled"]
    for key in ("hr@5", "hr@10", "ndcg@5", "ndcg@10"):
        assert served[key] == pytest.approx(trained[key], abs=2e-3)
