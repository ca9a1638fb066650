"""Publishing a model version on model-updates (real broker for the kafka-marked tests)."""

from __future__ import annotations

import pytest

from batch_training.publish import flat_metrics, main, model_update_for
from schemas.artifact import WEIGHTS, manifest_checksum
from schemas.events import decode_model_update
from schemas.registry import Registry
from schemas.topics import MODEL_UPDATE_KEY
from tests.kafka_util import consume_all, partition_count, topic_config, unique_topic
from tests.lifecycle_util import make_artifact


def test_flat_metrics_keeps_numbers_only():
    nested = {"test": {"recall@20": 0.3, "mrr@20": 1}, "epochs": 4, "note": "x", "ok": True}
    assert flat_metrics(nested) == {"test.recall@20": 0.3, "test.mrr@20": 1.0, "epochs": 4.0}


def test_model_update_describes_the_artifact(tmp_path):
    path = make_artifact(tmp_path / "m", version="v0004", metrics={"test": {"recall@20": 0.5}})
    update = model_update_for(path)
    assert update.version == "v0004"
    assert update.artifact_uri == str(path.resolve())
    assert update.checksum == manifest_checksum(path)
    assert update.metrics == {"test.recall@20": 0.5}
    assert update.created_at == 1_700_000_000_000
    assert model_update_for(path, uri="s3://bucket/v0004").artifact_uri == "s3://bucket/v0004"


def test_corrupt_artifact_is_refused_before_any_broker_contact(tmp_path, capsys):
    path = make_artifact(tmp_path / "m")
    (path / WEIGHTS).write_bytes(b"not a zip")
    # Port 9 (discard) has no broker: reaching it would fail with another message.
    assert main([str(path), "--bootstrap", "127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "weights.npz" in err


def test_unknown_version_is_refused(tmp_path, capsys):
    assert main(["v0009", "--registry", str(tmp_path), "--bootstrap", "127.0.0.1:9"]) == 1
    assert "no such version" in capsys.readouterr().err


@pytest.mark.kafka
def test_publish_creates_compacted_topic_and_sends_update(tmp_path, kafka_bootstrap, capsys):
    topic = unique_topic("model-updates")
    path = make_artifact(tmp_path / "m", version="v0001")
    assert main([str(path), "--bootstrap", kafka_bootstrap, "--topic", topic]) == 0
    assert "published v0001" in capsys.readouterr().out

    records = consume_all(kafka_bootstrap, topic)
    assert len(records) == 1
    assert records[0].key == MODEL_UPDATE_KEY
    update = decode_model_update(records[0].value)
    assert update == model_update_for(path)

    assert partition_count(kafka_bootstrap, topic) == 1
    assert topic_config(kafka_bootstrap, topic)["cleanup.policy"] == "compact"


@pytest.mark.kafka
def test_publish_from_registry_promotes_and_rolls_back(tmp_path, kafka_bootstrap):
    topic = unique_topic("model-updates")
    reg = Registry(tmp_path / "reg")
    for v in ("v0001", "v0002"):
        make_artifact(reg.root / v, version=v, seed=int(v[-1]))
    common = ["--registry", str(reg.root), "--bootstrap", kafka_bootstrap, "--topic", topic]
    assert main(["latest", *common]) == 0
    assert reg.promoted() == "v0002"
    assert main(["v0001", *common]) == 0  # rollback
    assert reg.promoted() == "v0001"
    versions = [decode_model_update(r.value).version for r in consume_all(kafka_bootstrap, topic)]
    assert versions == ["v0002", "v0001"]
