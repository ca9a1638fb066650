"""Shared fixtures. `kafka_bootstrap` gives integration tests a real Kafka broker.

Where the broker comes from, in order:
1. `$GRU4STREAM_BOOTSTRAP` (host:port) when it answers (`.ci/run` sets it);
2. a broker already answering on 127.0.0.1:9092 (`gru4stream broker start`);
3. otherwise a broker started for this test session on free ports with a temporary data
   directory (needs `java` 17+ and, on first use, `mvn` to fetch the jars), stopped at the end.

Tests that use the fixture are marked `kafka` automatically, so `python -m pytest -m "not kafka"`
runs the rest on a machine without Java. Tests sharing one broker must use unique topic names
and group ids (`tests.kafka_util.unique_topic`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.kafka.broker import BrokerConfig, BrokerError, free_port, probe, start, stop
from deploy.kafka.secure import SUPER_USER
from kafka_io import KafkaSettings, load_settings
from kafka_io.topics import delete_topics, list_topics

log = logging.getLogger(__name__)

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kafka: needs a real Kafka broker (fixture kafka_bootstrap)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        uses_broker = {"kafka_bootstrap", "secure_broker"} & set(getattr(item, "fixturenames", ()))
        if uses_broker and not item.get_closest_marker("kafka"):
            item.add_marker(pytest.mark.kafka)


@contextlib.contextmanager
def topics_left_as_found(bootstrap: str) -> Iterator[None]:
    """Delete the topics a session made on a broker that outlives it.

    Every test makes topics of its own; a development broker that kept them all would
    carry thousands of partitions after a few runs, and spend about a second of CPU every
    5 s on periodic work over them, which slows every later test and benchmark.
    """
    settings = load_settings(overrides={"bootstrap.servers": bootstrap})
    before = set(asyncio.run(list_topics(settings)))
    try:
        yield
    finally:
        try:
            made = {t for t in asyncio.run(list_topics(settings)) if not t.startswith("__")}
            made -= before  # the broker's own (__consumer_offsets) may appear: never those
            if made:
                asyncio.run(delete_topics(settings, sorted(made), timeout_s=60))
        except Exception as exc:  # noqa: BLE001 - leftovers slow the broker, they break nothing
            log.warning("could not delete this session's topics: %s", exc)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`host:port` of a running Kafka broker for the whole test session."""
    env = os.environ.get("GRU4STREAM_BOOTSTRAP")
    if env:
        if probe(env, timeout=5.0):
            with topics_left_as_found(env):
                yield env
            return
        log.warning("GRU4STREAM_BOOTSTRAP=%s does not answer; looking elsewhere", env)
    if probe(DEFAULT_BOOTSTRAP):
        with topics_left_as_found(DEFAULT_BOOTSTRAP):
            yield DEFAULT_BOOTSTRAP
        return
    config = BrokerConfig(
        port=free_port(),
        controller_port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka"),
    )
    try:
        info = start(config)
    except BrokerError as exc:
        pytest.fail(f"no Kafka broker for the integration tests: {exc}", pytrace=False)
    try:
        yield info.bootstrap
    finally:
        stop(config)


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """The `KafkaSettings` of the session's broker (`kafka_bootstrap`), for functions that
    take a Kafka connection."""
    return load_settings(overrides={"bootstrap.servers": kafka_bootstrap})


@dataclass(frozen=True)
class SecureBroker:
    """A running `gru4stream broker start --secure` and where its clients' settings are."""

    config: BrokerConfig

    @property
    def bootstrap(self) -> str:
        return self.config.bootstrap

    @property
    def ca_path(self) -> Path:
        return self.config.ca_file

    def properties(self, principal: str) -> Path:
        """`clients/<principal>.properties` (admin, producer, worker, trainer)."""
        return self.config.client_properties(principal)

    @property
    def admin_properties(self) -> Path:
        return self.properties(SUPER_USER)


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A secure broker (SASL_SSL, SCRAM users, ACLs) on free ports, once per test session.

    Started only when a test asks for it (about 8 s), stopped at the end of the session.
    """
    config = BrokerConfig(
        port=free_port(),
        controller_port=free_port(),
        data_dir=tmp_path_factory.mktemp("kafka-secure"),
        secure=True,
    )
    try:
        start(config)
    except BrokerError as exc:
        pytest.fail(f"no secure Kafka broker for the tests: {exc}", pytrace=False)
    try:
        yield SecureBroker(config)
    finally:
        stop(config)
