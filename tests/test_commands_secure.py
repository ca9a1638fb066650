"""The batch commands against the secure broker: each authenticates with `--kafka-config` as
its own principal, and a refusal (wrong password, missing ACL) is one line without a secret."""

from __future__ import annotations

import time

import pytest
import torch

from batch_training.publish import main as publish_main
from batch_training.retrain import main as retrain_main
from gru4stream.produce import main as produce_main
from kafka_io import load_settings
from schemas.events import decode_model_update
from schemas.registry import Registry
from schemas.topics import CLICKS, spec_named
from tests.kafka_util import consume_all, create_topic, unique_topic
from tests.test_retrain import _markov_clicks

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_produce_retrain_and_publish_authenticate_as_their_principals(
    secure_broker, tmp_path, capsys
):
    admin = load_settings(secure_broker.admin_properties, environ={})
    clicks = create_topic(admin, spec_named(unique_topic("clicks"), CLICKS))  # producer: no CREATE
    updates = unique_topic("model-updates")
    events = _markov_clicks(150, 30, int(time.time() * 1000), seed=5)
    csv = tmp_path / "clicks.csv"
    csv.write_text(
        "session_id,item_id,timestamp\n"
        + "".join(f"{e.session_id},{e.item_id},{e.timestamp}\n" for e in events)
    )
    producer = ["--kafka-config", str(secure_broker.properties("producer"))]
    argv = ["--file", str(csv), "--topic", clicks, "--time-mode", "keep", "--no-progress"]
    assert produce_main([*argv, *producer]) == 0
    assert f"sent {len(events)} clicks" in capsys.readouterr().out

    registry = Registry(tmp_path / "models")
    trainer = ["--kafka-config", str(secure_broker.properties("trainer"))]
    small = ["--set", "layers=16", "--set", "n_epochs=1", "--set", "n_sample=32"]
    argv = ["--topic", clicks, "--updates-topic", updates, "--registry", str(registry.root)]
    argv += ["--min-sessions", "5"]  # a small archive: the gate's default wants 100
    argv += ["--device", "cpu", "--no-progress", *small]
    assert retrain_main([*argv, *trainer]) == 0
    assert "promoted and published" in capsys.readouterr().out

    common = ["--registry", str(registry.root), "--topic", updates]
    assert publish_main(["v0001", *common, *trainer]) == 0
    versions = [decode_model_update(r.value).version for r in consume_all(admin, updates)]
    assert versions == ["v0001", "v0001"]

    # The worker principal may read model updates, not announce them.
    worker = ["--kafka-config", str(secure_broker.properties("worker"))]
    assert publish_main(["v0001", *common, *worker]) == 1
    err = capsys.readouterr().err
    assert "gru4stream publish: " in err and "User:worker is not allowed" in err
    assert len(consume_all(admin, updates)) == 2


def test_a_wrong_password_is_one_line_that_names_the_user(secure_broker, capsys):
    topic = unique_topic("clicks")  # never reached: the login fails first
    wrong = "not-the-password-7f3"
    argv = ["--dataset", "movielens-100k", "--limit", "5", "--topic", topic, "--no-progress"]
    argv += ["--kafka-config", str(secure_broker.properties("producer"))]
    assert produce_main([*argv, "--kafka-set", f"sasl.password={wrong}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"gru4stream produce: {secure_broker.bootstrap}: authentication failed")
    assert "sasl.username 'producer'" in err and wrong not in err
