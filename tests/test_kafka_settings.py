"""kafka_io.settings (client.properties, environment, flags) and the one-line Kafka errors."""

from __future__ import annotations

import argparse
import asyncio
import ssl

import pytest

from deploy.kafka.broker import free_port
from kafka_io import DEFAULT_BOOTSTRAP, KafkaConfigError, KafkaSettings, load_settings
from kafka_io.cli import (
    add_kafka_arguments,
    failure_text,
    redact_argv,
    report_failure,
    run_kafka,
    settings_from_args,
)
from kafka_io.errors import KafkaSetupError, check_connection, explain
from kafka_io.settings import Secret, parse_properties

PASSWORD = "hunter2-Zq9"  # must never show up in any text the project prints


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def sasl_file(tmp_path, **extra: str):
    lines = {
        "bootstrap.servers": "kafka-1.example:9093,kafka-2.example:9093",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "trainer",
        "sasl.password": PASSWORD,
        **extra,
    }
    return write(tmp_path / "client.properties", "".join(f"{k}={v}\n" for k, v in lines.items()))


# --- the properties format ---------------------------------------------------------------------


def test_properties_comments_separators_and_blank_lines():
    text = (
        "# a comment\n"
        "! also a comment\n"
        "\n"
        "   \n"
        "a=1\n"
        "b : 2\n"
        "c 3\n"
        "  d\t=\t4  \n"
        "e=x # not a comment here\n"
        "lonely\n"
        "a=last wins\n"
    )
    assert parse_properties(text) == {
        "a": "last wins",
        "b": "2",
        "c": "3",
        "d": "4  ",
        "e": "x # not a comment here",
        "lonely": "",
    }


def test_properties_continuations_and_escapes():
    text = (
        "servers=a:9092,\\\n"
        "        b:9092,\\\n"
        "        c:9092\n"
        "key\\ with\\ spaces\\=and\\:colon=v\n"
        "tab=one\\ttwo\n"
        "unicode=caf\\u00e9\n"
        "backslash=ends\\\\\n"
        "next=still separate\n"
        "# a comment ending in a backslash does not continue \\\n"
        "after=comment\n"
    )
    assert parse_properties(text) == {
        "servers": "a:9092,b:9092,c:9092",
        "key with spaces=and:colon": "v",
        "tab": "one\ttwo",
        "unicode": "café",
        "backslash": "ends\\",
        "next": "still separate",
        "after": "comment",
    }


def test_a_continuation_at_the_end_of_the_file_is_harmless():
    assert parse_properties("a=1\\") == {"a": "1"}


# --- JAAS ---------------------------------------------------------------------------------------


def test_jaas_config_gives_username_and_password(tmp_path):
    path = write(
        tmp_path / "client.properties",
        "security.protocol=SASL_PLAINTEXT\n"
        "sasl.mechanism=SCRAM-SHA-256\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
        '    username="svc-worker" \\\n'
        '    password="pa\\\\"ss";\n',
    )
    settings = load_settings(path, environ={})
    assert settings.sasl_username == "svc-worker"
    assert settings.sasl_password == Secret('pa"ss')
    assert settings.sasl_mechanism == "SCRAM-SHA-256"

    plain = load_settings(
        overrides={
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule "
            'required username="u" password="p";',
        },
        environ={},
    )
    assert (plain.sasl_username, plain.sasl_password.reveal()) == ("u", "p")


@pytest.mark.parametrize(
    "jaas",
    [
        'com.example.OtherLoginModule required username="u" password="p";',
        'org.apache.kafka.common.security.scram.ScramLoginModule required username="u";',
    ],
)
def test_bad_jaas_config_is_refused_without_echoing_it(jaas):
    with pytest.raises(KafkaConfigError, match="sasl.jaas.config") as info:
        load_settings(overrides={"sasl.jaas.config": jaas}, environ={})
    assert '"p"' not in str(info.value)


# --- where settings come from --------------------------------------------------------------------


def test_defaults_are_a_local_plaintext_broker():
    settings = load_settings(environ={})
    assert settings == KafkaSettings()
    assert settings.bootstrap_servers == DEFAULT_BOOTSTRAP == "127.0.0.1:9092"
    assert settings.security_protocol == "PLAINTEXT" and not settings.uses_tls
    assert settings.hosts == [("127.0.0.1", 9092)]


def test_precedence_defaults_then_environment_then_file_then_flags(tmp_path):
    env = {
        "GRU4STREAM_BOOTSTRAP": "legacy:1",
        "GRU4STREAM_KAFKA_CLIENT_ID": "from-env",
        "GRU4STREAM_KAFKA_REPLICATION_FACTOR": "2",
        "GRU4STREAM_KAFKA_MIN_INSYNC_REPLICAS": "1",
    }
    only_env = load_settings(environ=env)
    assert only_env.bootstrap_servers == "legacy:1"
    assert (only_env.client_id, only_env.replication_factor) == ("from-env", 2)
    new_name = load_settings(environ={**env, "GRU4STREAM_KAFKA_BOOTSTRAP_SERVERS": "env:2"})
    assert new_name.bootstrap_servers == "env:2"  # the project's own name beats the legacy one

    path = write(tmp_path / "c.properties", "bootstrap.servers=file:3\nclient.id=from-file\n")
    with_file = load_settings(path, environ=env)
    assert (with_file.bootstrap_servers, with_file.client_id) == ("file:3", "from-file")
    assert with_file.replication_factor == 2  # the file leaves the rest of the environment

    flags = load_settings(path, {"bootstrap.servers": "flag:4"}, environ=env)
    assert (flags.bootstrap_servers, flags.client_id) == ("flag:4", "from-file")

    by_env_var = load_settings(environ={**env, "GRU4STREAM_KAFKA_CONFIG": str(path)})
    assert by_env_var.bootstrap_servers == "file:3"


def test_command_line_options_give_the_settings(tmp_path, monkeypatch):
    for name in ("GRU4STREAM_BOOTSTRAP", "GRU4STREAM_KAFKA_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    parser = argparse.ArgumentParser()
    add_kafka_arguments(parser)
    path = write(tmp_path / "c.properties", "bootstrap.servers=file:1\nclient.id=f\n")
    args = parser.parse_args(
        ["--kafka-config", str(path), "--bootstrap", "flag:2", "--kafka-set", "client.id=s"]
    )
    settings = settings_from_args(args)
    assert (settings.bootstrap_servers, settings.client_id) == ("flag:2", "s")
    with pytest.raises(KafkaConfigError, match="expected KEY=VALUE"):
        settings_from_args(parser.parse_args(["--kafka-set", "client.id"]))


def test_unknown_key_is_refused_with_its_name_and_where_it_came_from(tmp_path):
    path = write(tmp_path / "c.properties", "sasl.pasword=x\n")
    with pytest.raises(KafkaConfigError, match=r"sasl\.pasword") as info:
        load_settings(path, environ={})
    assert str(path) in str(info.value) and "unknown setting" in str(info.value)
    with pytest.raises(KafkaConfigError, match=r"linger\.ms \(command line\)"):
        load_settings(overrides={"linger.ms": "5"}, environ={})


def test_java_truststore_gets_a_hint_to_the_pem_setting():
    with pytest.raises(KafkaConfigError, match=r"ssl\.truststore\.location.*ssl\.ca\.location"):
        load_settings(overrides={"ssl.truststore.location": "/etc/kafka/ts.jks"}, environ={})
    with pytest.raises(KafkaConfigError, match=r"ssl\.certificate\.location"):
        load_settings(overrides={"ssl.keystore.location": "/etc/kafka/ks.jks"}, environ={})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"security.protocol": "TLS"}, r"security\.protocol.*'TLS'.*SASL_SSL"),
        ({"sasl.mechanism": "GSSAPI"}, r"sasl\.mechanism.*'GSSAPI'.*SCRAM-SHA-512"),
        ({"security.protocol": "SASL_SSL"}, r"needs sasl\.username and sasl\.password"),
        ({"bootstrap.servers": "kafka-without-port"}, r"not HOST:PORT"),
        ({"replication.factor": "three"}, r"replication\.factor.*whole number"),
        ({"min.insync.replicas": "0"}, r"min\.insync\.replicas.*at least 1"),
        ({"ssl.endpoint.identification.algorithm": "none"}, r"'https' or empty"),
        ({"ssl.certificate.location": __file__, "security.protocol": "SSL"}, r"go together"),
    ],
)
def test_invalid_values_are_refused_naming_the_setting(values, message):
    with pytest.raises(KafkaConfigError, match=message):
        load_settings(overrides=values, environ={})


def test_tls_files_must_exist_and_need_a_tls_protocol(tmp_path):
    missing = tmp_path / "nowhere" / "ca.pem"
    with pytest.raises(KafkaConfigError, match=rf"ssl\.ca\.location: no such file: {missing}"):
        load_settings(
            overrides={"security.protocol": "SSL", "ssl.ca.location": str(missing)}, environ={}
        )
    ca = write(tmp_path / "ca.pem", "not checked here\n")
    with pytest.raises(KafkaConfigError, match=r"ssl\.ca\.location is set but.*PLAINTEXT"):
        load_settings(overrides={"ssl.ca.location": str(ca)}, environ={})
    settings = load_settings(
        overrides={"security.protocol": "SSL", "ssl.ca.location": str(ca)}, environ={}
    )
    assert settings.uses_tls and settings.ssl_ca_location == str(ca)


def test_an_unreadable_config_file_is_named(tmp_path):
    with pytest.raises(KafkaConfigError, match=r"--kafka-config .*absent\.properties"):
        load_settings(tmp_path / "absent.properties", environ={})


# --- passwords never leak -------------------------------------------------------------------------


def test_password_is_masked_in_repr_str_and_describe(tmp_path):
    settings = load_settings(sasl_file(tmp_path), environ={})
    assert settings.sasl_password.reveal() == PASSWORD
    for text in (repr(settings), str(settings), settings.describe(), f"{settings}"):
        assert PASSWORD not in text
    assert "***" in repr(settings)
    servers = "kafka-1.example:9093,kafka-2.example:9093"
    assert settings.describe() == f"{servers} over SASL_PLAINTEXT as 'trainer' (SCRAM-SHA-512)"
    secret = Secret(PASSWORD)
    assert PASSWORD not in f"{secret} {secret!r} {[secret]} {dict(p=secret)}"
    assert secret == Secret(PASSWORD) and secret != Secret("other") and not Secret("")


def test_password_stays_out_of_error_messages(tmp_path):
    path = sasl_file(tmp_path, **{"sasl.mechanism": "MD5"})
    with pytest.raises(KafkaConfigError) as info:
        load_settings(path, environ={})
    assert PASSWORD not in str(info.value)
    settings = load_settings(sasl_file(tmp_path), environ={})
    from aiokafka.errors import SaslAuthenticationFailed

    text = explain(SaslAuthenticationFailed("bad"), settings)
    assert "trainer" in text and "sasl.password" in text and PASSWORD not in text


def test_password_stays_out_of_the_retrain_options(tmp_path):
    from batch_training.retrain import RetrainOptions

    options = RetrainOptions(kafka=load_settings(sasl_file(tmp_path), environ={}))
    assert PASSWORD not in repr(options)


def test_recorded_command_lines_mask_secret_settings():
    argv = [
        "--topic", "clicks", "--kafka-set", f"sasl.password={PASSWORD}",
        f"--kafka-set=ssl.key.password={PASSWORD}", "--kafka-s", f"sasl.jaas.config=x {PASSWORD}",
        "--kafka-set", "client.id=trainer", "--note", f"sasl.password={PASSWORD}",
    ]  # fmt: skip
    assert redact_argv(argv) == [
        "--topic", "clicks", "--kafka-set", "sasl.password=***",
        "--kafka-set=ssl.key.password=***", "--kafka-s", "sasl.jaas.config=***",
        "--kafka-set", "client.id=trainer", "--note", f"sasl.password={PASSWORD}",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "target",
    [
        "batch_training.publish:main",
        "batch_training.retrain:main",
        "batch_training.cli:train_main",
        "batch_training.cli:evaluate_main",
        "gru4stream.produce:main",
    ],
)
def test_help_shows_no_password_from_the_environment(target, monkeypatch, capsys, tmp_path):
    import importlib

    monkeypatch.setenv("GRU4STREAM_KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("GRU4STREAM_KAFKA_CONFIG", str(sasl_file(tmp_path)))
    module, name = target.split(":")
    main = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--kafka-config" in out and "--bootstrap" in out and "--kafka-set" in out
    assert PASSWORD not in out


# --- one-line errors -----------------------------------------------------------------------------


def test_connection_refused_is_explained_in_one_line():
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = load_settings(overrides={"bootstrap.servers": address}, environ={})
    with pytest.raises(KafkaSetupError) as info:
        asyncio.run(check_connection(settings, timeout_s=5))
    assert str(info.value) == f"{address}: connection refused; check bootstrap.servers"
    assert explain(ConnectionRefusedError(111, "refused"), settings) == str(info.value)


def test_failure_text_and_exit_statuses(capsys):
    settings = load_settings(overrides={"bootstrap.servers": "127.0.0.1:1"}, environ={})
    stalled = TimeoutError("clicks: no messages for 60 s")
    assert failure_text(stalled, settings) == "127.0.0.1:1: clicks: no messages for 60 s"
    assert "no answer in time" in failure_text(TimeoutError(), settings)
    assert "TLS handshake failed" in failure_text(ssl.SSLError(1, "wrong version"), settings)

    assert report_failure("gru4stream x", KafkaConfigError("sasl.pasword (file): unknown")) == 2
    assert report_failure("gru4stream x", ConnectionRefusedError(), settings) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "gru4stream x: sasl.pasword (file): unknown",
        "gru4stream x: 127.0.0.1:1: connection refused; check bootstrap.servers",
    ]


def test_run_kafka_turns_kafka_failures_into_one_line_setup_errors():
    settings = load_settings(overrides={"bootstrap.servers": "127.0.0.1:1"}, environ={})

    async def refused():
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(KafkaSetupError, match=r"^127\.0\.0\.1:1: connection refused"):
        run_kafka(refused(), settings)

    async def not_kafka():
        raise KeyError("x")

    with pytest.raises(KeyError):
        run_kafka(not_kafka(), settings)


def test_a_command_with_a_wrong_setting_exits_2_in_one_line(tmp_path, capsys):
    from batch_training.publish import main

    assert main([str(tmp_path), "--kafka-set", "sasl.pasword=x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gru4stream publish: sasl.pasword (command line): unknown setting")
    assert err.count("\n") == 1
