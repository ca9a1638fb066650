"""The development broker: start, serve, start again, stop without leftovers, clear errors.

These tests start their own broker on free ports with a temporary data directory, so they never
touch the shared one on 9092.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from kafka_util import consume_all, create_topic, produce, unique_topic

from deploy.kafka import broker
from deploy.kafka.broker import BrokerConfig, BrokerError, free_port, port_free, probe


def _config(tmp_path: Path, **kw) -> BrokerConfig:
    return BrokerConfig(
        port=free_port(), controller_port=free_port(), data_dir=tmp_path / "kafka", **kw
    )


def _processes_using(path: Path) -> list[int]:
    """Pids whose command line names `path` (the broker's properties file)."""
    needle = str(path).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if needle in cmdline.split(b"\0") and state not in ("Z", "X"):
            pids.append(int(entry.name))
    return pids


@pytest.mark.kafka
def test_start_serve_start_again_restart_stop(tmp_path: Path, capsys) -> None:
    config = _config(tmp_path)
    info = broker.start(config)
    try:
        assert info.running and not info.already_running and info.pid
        assert info.bootstrap == f"127.0.0.1:{config.port}"
        assert probe(info.bootstrap)
        assert _processes_using(config.properties_file) == [info.pid]
        # The log file is written: the slf4j 1.7 binding for log4j2 is on the classpath.
        assert "Kafka Server started" in config.log_file.read_text()

        again = broker.start(config)
        assert again.already_running and again.pid == info.pid

        topic = create_topic(info.bootstrap, unique_topic("broker"), partitions=2)
        sent = produce(info.bootstrap, topic, [(f"k{i}", f"v{i}") for i in range(20)])
        assert len(sent) == 20
        got = consume_all(info.bootstrap, topic)
        assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(20))

        common = ["--port", str(config.port), "--controller-port", str(config.ctl_port)]
        common += ["--data-dir", str(config.data_path)]
        assert broker.main(["status", *common]) == 0
        out = capsys.readouterr().out
        assert f"running: {info.bootstrap}" in out and str(config.log_file) in out

        # A restart reuses the formatted storage: the topic and its records are still there.
        assert broker.stop(config)
        assert _processes_using(config.properties_file) == []
        info = broker.start(config)
        assert not info.already_running
        assert len(consume_all(info.bootstrap, topic)) == 20
    finally:
        stopped = broker.stop(config)
    assert stopped
    assert _processes_using(config.properties_file) == []
    assert not probe(info.bootstrap)
    assert port_free("127.0.0.1", config.port) and port_free("127.0.0.1", config.ctl_port)
    assert not config.pid_file.exists()
    assert not broker.status(config).running
    assert broker.stop(config) is False
    assert broker.main(["status", *common]) == 3
    assert capsys.readouterr().out.startswith("not running")


@pytest.mark.parametrize("which", ["port", "controller_port"])
def test_taken_port_gives_a_clear_error(tmp_path: Path, which: str, capsys) -> None:
    config = _config(tmp_path)
    taken = config.port if which == "port" else config.ctl_port
    with socket.socket() as s:
        s.bind(("127.0.0.1", taken))
        s.listen()
        with pytest.raises(BrokerError, match=f"port {taken} on 127.0.0.1 is already in use"):
            broker.start(config)
        args = ["start", "--port", str(config.port), "--controller-port", str(config.ctl_port)]
        assert broker.main([*args, "--data-dir", str(config.data_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already in use" in err and "Traceback" not in err
    assert not config.pid_file.exists()


def test_missing_java_gives_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither java nor mvn on it
    config = _config(tmp_path)
    args = ["start", "--port", str(config.port), "--controller-port", str(config.ctl_port)]
    assert broker.main([*args, "--data-dir", str(config.data_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`java` is not on the PATH" in err


def test_missing_maven_gives_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert broker.main(["fetch", "--cache-dir", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`mvn` (Apache Maven) is not on the PATH" in err


@pytest.mark.skipif(shutil.which("mvn") is None, reason="needs Apache Maven")
def test_failed_maven_fetch_gives_a_clear_error(tmp_path: Path, capsys) -> None:
    cache = tmp_path / "cache"
    rc = broker.main(["fetch", "--kafka-version", "0.0.404", "--cache-dir", str(cache)])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fetching Kafka 0.0.404 jars with Maven failed" in err
    assert not (cache / "lib").exists()  # nothing half-fetched is left to be mistaken for jars


@pytest.mark.kafka
def test_broker_that_cannot_start_is_reported_and_cleaned_up(tmp_path: Path) -> None:
    config = _config(tmp_path, extra_properties={"num.io.threads": "not-a-number"})
    with pytest.raises(BrokerError) as info:
        broker.start(config)
    assert "num.io.threads" in str(info.value) and "\n" not in str(info.value)
    assert _processes_using(config.properties_file) == []
    assert not config.pid_file.exists()


@pytest.mark.kafka
def test_broker_that_exits_during_startup_is_reported(tmp_path: Path) -> None:
    config = _config(tmp_path, heap=("-Xmx1k",))  # formats fine, then the JVM refuses to run
    with pytest.raises(BrokerError) as info:
        broker.start(config)
    message = str(info.value)
    assert message.startswith("the broker exited during startup")
    assert "heap" in message and "\n" not in message
    assert _processes_using(config.properties_file) == []
    assert not config.pid_file.exists()


def test_server_properties_describe_a_single_loopback_node(tmp_path: Path) -> None:
    config = _config(tmp_path)
    props = dict(
        line.split("=", 1)
        for line in broker.server_properties(config).splitlines()
        if line and not line.startswith("#")
    )
    assert props["listeners"] == (
        f"PLAINTEXT://127.0.0.1:{config.port},CONTROLLER://127.0.0.1:{config.ctl_port}"
    )
    assert props["process.roles"] == "broker,controller"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == str(config.data_path / "logs")


def test_default_paths_follow_port_and_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GRU4STREAM_KAFKA_DATA", raising=False)
    assert BrokerConfig(port=19999).data_path.name == "19999"
    monkeypatch.setenv("GRU4STREAM_KAFKA_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("GRU4STREAM_KAFKA_CACHE", str(tmp_path / "c"))
    config = BrokerConfig()
    assert config.data_path == tmp_path / "d"
    assert config.lib_dir == tmp_path / "c" / broker.KAFKA_VERSION / "lib"
    assert os.fspath(config.log_file).startswith(os.fspath(tmp_path / "d"))


def test_probe_is_false_for_something_that_is_not_kafka() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert not probe(f"127.0.0.1:{port}", timeout=0.5)  # accepts, never answers
    assert not probe(f"127.0.0.1:{port}", timeout=0.5)  # nothing listens
