"""Export to the artifact format and back: the artifact read back reproduces torch's scores."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from batch_training.config import TrainConfig
from batch_training.export import export_artifact
from batch_training.model import GRU4Rec
from batch_training.train import TrainResult, train
from schemas.artifact import ArtifactError, read_artifact

N_ITEMS = 40


@dataclass(frozen=True)
class Vocab:
    ids: tuple[str, ...]


@dataclass(frozen=True)
class Sessions:
    items: np.ndarray
    offsets: np.ndarray


VOCAB = Vocab(tuple(f"item-{i}" for i in range(N_ITEMS)))
MODES = {
    "shared": dict(constrained_embedding=True),
    "embedding": dict(constrained_embedding=False, embedding=12),
    "onehot": dict(constrained_embedding=False, embedding=0),
}


def torch_scores(model: GRU4Rec, sessions: list[list[int]]) -> np.ndarray:
    """Sessions of equal length stepped as one batch through GRU4Rec.step / score_all."""
    batch = torch.tensor(sessions)  # (B, T)
    hidden = model.init_hidden(len(sessions))
    with torch.no_grad():
        for t in range(batch.shape[1]):
            output, hidden = model.step(batch[:, t], hidden)
        return model.score_all(output).numpy()


def cyclic_sessions(n_sessions: int, seed: int = 0) -> Sessions:
    rng = np.random.default_rng(seed)
    items, offsets = [], [0]
    for _ in range(n_sessions):
        start, length = rng.integers(0, N_ITEMS), rng.integers(2, 7)
        items += [(start + k) % N_ITEMS for k in range(length)]
        offsets.append(len(items))
    return Sessions(np.array(items), np.array(offsets))


def trained(mode: str, layers=(10, 6)) -> TrainResult:
    config = TrainConfig(
        layers=layers,
        batch_size=8,
        n_sample=8,
        sample_cache_size=512,
        n_epochs=1,
        dropout_p_hidden=0.1,
        seed=5,
        **MODES[mode],
    )
    return train(cyclic_sessions(40), config, n_items=N_ITEMS, progress=False)


SESSIONS = [[3, 4, 5, 6], [0, 39, 1, 1], [17, 2, 33, 8]]


@pytest.mark.parametrize("mode", MODES)
def test_artifact_equations_reproduce_torch_scores(mode, tmp_path):
    torch.set_num_threads(1)
    result = trained(mode)
    with torch.no_grad():  # biases are zero at init: make them matter
        for name, p in result.model.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.1)
    support = np.arange(N_ITEMS, dtype=np.float64)
    path = export_artifact(
        result,
        VOCAB,
        tmp_path / "v1",
        version="v1",
        item_support=support,
        training_data={"n_events": 123},
        metrics={"recall@20": 0.5},
    )
    artifact = read_artifact(path)
    m = artifact.manifest
    assert (m.input_kind, m.n_items, m.layers) == (mode, N_ITEMS, (10, 6))
    assert m.embedding_dim == (12 if mode == "embedding" else 0)
    assert m.hyperparameters == result.config.to_dict()
    assert m.training_data["n_events"] == 123 and m.training_data["best_epoch"] == 1
    assert m.metrics == {"recall@20": 0.5}
    assert artifact.items == VOCAB.ids
    np.testing.assert_array_equal(artifact.weights["item_support"], support)

    # The artifact read back gives torch's scores; that the scoring core reading the same
    # artifact gives them too is the parity test (tests/test_scoring.py).
    expected = torch_scores(result.model, SESSIONS)
    reloaded = GRU4Rec.from_artifact(artifact)
    assert not reloaded.training
    assert np.max(np.abs(torch_scores(reloaded, SESSIONS) - expected)) < 1e-5


def test_export_refuses_mismatched_vocab_and_existing_version(tmp_path):
    result = trained("shared", layers=(6,))
    support = np.ones(N_ITEMS)
    with pytest.raises(ValueError, match="vocabulary"):
        export_artifact(
            result,
            Vocab(("a", "b")),
            tmp_path / "x",
            version="x",
            item_support=support,
            training_data={},
            metrics={},
        )
    with pytest.raises(ValueError, match="item_support"):
        export_artifact(
            result,
            VOCAB,
            tmp_path / "x",
            version="x",
            item_support=np.ones(3),
            training_data={},
            metrics={},
        )
    export_artifact(
        result,
        VOCAB,
        tmp_path / "v",
        version="v",
        item_support=support,
        training_data={},
        metrics={},
    )
    with pytest.raises(ArtifactError, match="immutable"):
        export_artifact(
            result,
            VOCAB,
            tmp_path / "v",
            version="v",
            item_support=support,
            training_data={},
            metrics={},
        )
