"""The Kafka options every command shares, and the settings they give."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from aiokafka.errors import KafkaError

from kafka_io.errors import KafkaSetupError, explain
from kafka_io.settings import KafkaConfigError, KafkaSettings, load_settings, parse_assignments
from kafka_io.topics import TopicError

# What ends a command's Kafka work with one line (ssl.SSLError and TimeoutError are OSErrors).
KAFKA_FAILURES: tuple[type[BaseException], ...] = (
    KafkaConfigError,
    KafkaSetupError,
    TopicError,
    KafkaError,
    OSError,
)

T = TypeVar("T")
SECRET_SETTINGS = ("sasl.password", "ssl.key.password", "sasl.jaas.config")


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    """`--kafka-config FILE`, `--bootstrap HOST:PORT` and `--kafka-set KEY=VALUE`."""
    group = parser.add_argument_group(
        "Kafka connection",
        "Kafka client settings in Kafka's own names (bootstrap.servers, security.protocol, "
        "sasl.*, ssl.*): from $GRU4STREAM_KAFKA_<KEY> variables, then the file, then flags. "
        "Default: a plaintext broker on 127.0.0.1:9092.",
    )
    group.add_argument(
        "--kafka-config",
        metavar="FILE",
        help="client.properties file (default: $GRU4STREAM_KAFKA_CONFIG)",
    )
    group.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="bootstrap.servers, overriding the file and the environment",
    )
    group.add_argument(
        "--kafka-set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="any other setting, e.g. --kafka-set replication.factor=3 (repeatable; put "
        "passwords in the file or the environment, not here)",
    )


def settings_from_args(args: argparse.Namespace) -> KafkaSettings:
    """KafkaConfigError (a ValueError) names the setting at fault."""
    overrides = parse_assignments(args.kafka_set)
    if args.bootstrap:
        overrides["bootstrap.servers"] = args.bootstrap
    return load_settings(args.kafka_config, overrides)


def failure_text(exc: BaseException, settings: KafkaSettings | None) -> str:
    """One line for a failure of a command's Kafka work: the setting at fault or what to check;
    never a password."""
    if settings is None or isinstance(exc, KafkaConfigError | KafkaSetupError | TopicError):
        return str(exc)
    if type(exc) is TimeoutError and str(exc):  # e.g. a read that stalled: says what it awaited
        return f"{settings.bootstrap_servers}: {exc}"
    return explain(exc, settings)


def report_failure(prog: str, exc: BaseException, settings: KafkaSettings | None = None) -> int:
    """Print `PROG: <failure_text>` on stderr; the exit status: 2 for wrong settings, else 1."""
    print(f"{prog}: {failure_text(exc, settings)}", file=sys.stderr)
    return 2 if isinstance(exc, KafkaConfigError) else 1


def run_kafka(main: Coroutine[Any, Any, T], settings: KafkaSettings) -> T:
    """`asyncio.run(main)` for a command's Kafka work: any of KAFKA_FAILURES comes out as a
    KafkaSetupError holding its one line (`failure_text`), so the command catches just that."""
    try:
        return asyncio.run(main)
    except KafkaConfigError:
        raise
    except KAFKA_FAILURES as exc:
        raise KafkaSetupError(failure_text(exc, settings)) from exc


def redact_argv(argv: Sequence[str]) -> list[str]:
    """`argv` with the values of secret `--kafka-set` settings masked: the command line as it
    may be recorded (metrics.json) or printed."""
    out: list[str] = []
    value_next = False
    for arg in argv:
        flag, eq, rest = arg.partition("=")
        is_flag = len(flag) >= len("--kafka-s") and "--kafka-set".startswith(flag)  # abbrev.
        if value_next:
            out.append(_redact_assignment(arg))
        elif is_flag and eq:
            out.append(f"{flag}={_redact_assignment(rest)}")
        else:
            out.append(arg)
        value_next = is_flag and not eq
    return out


def _redact_assignment(item: str) -> str:
    key, sep, _ = item.partition("=")
    return f"{key}=***" if sep and key.strip() in SECRET_SETTINGS else item
