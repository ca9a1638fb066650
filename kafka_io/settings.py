"""Connection settings for every Kafka client of the project, in Kafka's own vocabulary.

One frozen `KafkaSettings` is built per command from, lowest priority first:

1. the defaults (a plaintext broker on 127.0.0.1:9092),
2. the environment: `GRU4STREAM_KAFKA_<KEY>` with the property name upper-cased and dots as
   underscores (`GRU4STREAM_KAFKA_SASL_PASSWORD`), and `GRU4STREAM_BOOTSTRAP` for the
   bootstrap servers (kept for existing scripts),
3. a Java-style `client.properties` file (`--kafka-config FILE`),
4. single settings given on the command line (`--bootstrap`, `--kafka-set KEY=VALUE`).

A file named explicitly beats the ambient environment, and a flag beats the file. Unknown
keys are refused with their name, so a misspelt `sasl.pasword` never silently means
"no password". Passwords are held in `Secret`, whose text form is always masked: they can
be printed, logged or put in an exception message by mistake and still not leak.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

DEFAULT_BOOTSTRAP = "127.0.0.1:9092"
ENV_PREFIX = "GRU4STREAM_KAFKA_"
LEGACY_BOOTSTRAP_ENV = "GRU4STREAM_BOOTSTRAP"
CONFIG_FILE_ENV = "GRU4STREAM_KAFKA_CONFIG"

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class KafkaConfigError(ValueError):
    """The Kafka settings are wrong; the message names the setting and where it came from."""


class Secret:
    """A password: compares and hashes like its value, prints as '***'."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class KafkaSettings:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_ca_location: str | None = None  # PEM; None: the system's trusted CAs
    ssl_certificate_location: str | None = None  # PEM client certificate (mutual TLS)
    ssl_key_location: str | None = None  # PEM private key of that certificate
    ssl_key_password: Secret | None = None
    ssl_check_hostname: bool = True  # ssl.endpoint.identification.algorithm=https
    client_id: str | None = None
    # Topics (and Faust changelogs) created by the project; None: the broker's defaults.
    replication_factor: int | None = None
    min_insync_replicas: int | None = None

    @property
    def hosts(self) -> list[tuple[str, int]]:
        out = []
        for entry in self.bootstrap_servers.split(","):
            host, _, port = entry.strip().rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def describe(self) -> str:
        """One line for logs and errors: where, how, as whom; never a password."""
        who = f" as {self.sasl_username!r} ({self.sasl_mechanism})" if self.uses_sasl else ""
        return f"{self.bootstrap_servers} over {self.security_protocol}{who}"

    def with_values(self, values: Mapping[str, str], source: str) -> KafkaSettings:
        """These settings with `values` (property names) applied on top."""
        return replace(self, **_fields_from(values, source))


# --- property names ------------------------------------------------------------------------

_STRING_KEYS = {
    "bootstrap.servers": "bootstrap_servers",
    "security.protocol": "security_protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.username": "sasl_username",
    "ssl.ca.location": "ssl_ca_location",
    "ssl.certificate.location": "ssl_certificate_location",
    "ssl.key.location": "ssl_key_location",
    "client.id": "client_id",
}
_SECRET_KEYS = {"sasl.password": "sasl_password", "ssl.key.password": "ssl_key_password"}
_INT_KEYS = {
    "replication.factor": "replication_factor",
    "min.insync.replicas": "min_insync_replicas",
}
_OTHER_KEYS = ("sasl.jaas.config", "ssl.endpoint.identification.algorithm")
KNOWN_KEYS = tuple(sorted([*_STRING_KEYS, *_SECRET_KEYS, *_INT_KEYS, *_OTHER_KEYS]))

# Keys of the Java client that have a PEM equivalent here: say which one to use instead.
_HINTS = {
    "ssl.truststore.location": "ssl.ca.location (a PEM file)",
    "ssl.keystore.location": "ssl.certificate.location and ssl.key.location (PEM files)",
    "sasl.jaas.config.password": "sasl.password",
    "sasl.user": "sasl.username",
}

_JAAS = re.compile(
    r"^\s*org\.apache\.kafka\.common\.security\.(?:plain\.PlainLoginModule|"
    r"scram\.ScramLoginModule)\s+required\s+(?P<options>.*?);?\s*$",
    re.S,
)
_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


def _fields_from(values: Mapping[str, str], source: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in values.items():
        where = f"{key} ({source})"
        value = value.strip()
        if key in _STRING_KEYS:
            out[_STRING_KEYS[key]] = value or None
        elif key in _SECRET_KEYS:
            out[_SECRET_KEYS[key]] = Secret(value)
        elif key in _INT_KEYS:
            try:
                number = int(value)
            except ValueError:
                raise KafkaConfigError(f"{where}: not a whole number") from None
            if number < 1:
                raise KafkaConfigError(f"{where}: must be at least 1")
            out[_INT_KEYS[key]] = number
        elif key == "sasl.jaas.config":
            out.update(_from_jaas(value, where))
        elif key == "ssl.endpoint.identification.algorithm":
            if value.lower() not in ("https", ""):
                raise KafkaConfigError(f"{where}: expected 'https' or empty, got {value!r}")
            out["ssl_check_hostname"] = value.lower() == "https"
        else:
            hint = f"; use {_HINTS[key]}" if key in _HINTS else ""
            raise KafkaConfigError(
                f"{where}: unknown setting{hint} (known: {', '.join(KNOWN_KEYS)})"
            )
    _check_choices(out, source)
    return out


def _from_jaas(value: str, where: str) -> dict[str, object]:
    match = _JAAS.match(value)
    if not match:
        raise KafkaConfigError(
            f"{where}: expected 'org.apache.kafka.common.security.scram.ScramLoginModule "
            'required username="..." password="...";\' (or plain.PlainLoginModule)'
        )
    options = {k: re.sub(r"\\(.)", r"\1", v) for k, v in _JAAS_OPTION.findall(match["options"])}
    if "username" not in options or "password" not in options:
        raise KafkaConfigError(f'{where}: needs both username="..." and password="..."')
    return {"sasl_username": options["username"], "sasl_password": Secret(options["password"])}


def _check_choices(values: Mapping[str, object], source: str) -> None:
    protocol = values.get("security_protocol")
    if protocol is not None and protocol not in PROTOCOLS:
        raise KafkaConfigError(
            f"security.protocol ({source}): {protocol!r} is not one of {', '.join(PROTOCOLS)}"
        )
    mechanism = values.get("sasl_mechanism")
    if mechanism is not None and mechanism not in MECHANISMS:
        raise KafkaConfigError(
            f"sasl.mechanism ({source}): {mechanism!r} is not one of {', '.join(MECHANISMS)}"
        )
    servers = values.get("bootstrap_servers")
    if servers is not None:
        for entry in str(servers).split(","):
            host, _, port = entry.strip().rpartition(":")
            if not host or not port.isdigit():
                raise KafkaConfigError(
                    f"bootstrap.servers ({source}): {entry.strip()!r} is not HOST:PORT"
                )


# --- sources -------------------------------------------------------------------------------


def parse_properties(text: str, source: str = "properties") -> dict[str, str]:
    """Java `.properties` text -> {key: value}: `=`, `:` or blanks as separators, `#` and `!`
    comments, backslash line continuation and escapes. A key given twice keeps the last."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for number, line in enumerate(lines, 1):
        line = line.lstrip()
        if not line or line[0] in "#!":
            continue
        while _continues(line):
            line = line[:-1] + next(lines, "").lstrip()
        match = re.match(r"((?:[^\s=:\\]|\\.)+)\s*[=:\s]\s*(.*)$", line)
        if match is None:  # a key alone means an empty value
            key, value = line.strip(), ""
        else:
            key, value = match[1], match[2]
        key, value = _unescape(key), _unescape(value)
        if not key:
            raise KafkaConfigError(f"{source}:{number}: no key on this line")
        out[key] = value
    return out


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _unescape(text: str) -> str:
    simple = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}

    def one(match: re.Match[str]) -> str:
        char = match[1]
        if char.startswith("u"):
            return chr(int(char[1:], 16))
        return simple.get(char, char)

    return re.sub(r"\\(u[0-9a-fA-F]{4}|.)", one, text)


def read_properties_file(path: str | os.PathLike[str]) -> dict[str, str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KafkaConfigError(f"--kafka-config {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise KafkaConfigError(f"--kafka-config {path}: not UTF-8 text") from None
    return parse_properties(text, str(path))


def environment_values(environ: Mapping[str, str]) -> dict[str, str]:
    """The properties set in the environment (only known names are read)."""
    out: dict[str, str] = {}
    if environ.get(LEGACY_BOOTSTRAP_ENV):
        out["bootstrap.servers"] = environ[LEGACY_BOOTSTRAP_ENV]
    for key in KNOWN_KEYS:
        name = ENV_PREFIX + key.upper().replace(".", "_")
        if environ.get(name) is not None:
            out[key] = environ[name]
    return out


def parse_assignments(items: Iterable[str], source: str = "--kafka-set") -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KafkaConfigError(f"{source} {item.split('=')[0]!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> KafkaSettings:
    """Defaults < environment < `config_file` (or $GRU4STREAM_KAFKA_CONFIG) < `overrides`."""
    environ = os.environ if environ is None else environ
    settings = KafkaSettings().with_values(environment_values(environ), "environment")
    config_file = config_file or environ.get(CONFIG_FILE_ENV) or None
    if config_file:
        settings = settings.with_values(read_properties_file(config_file), str(config_file))
    if overrides:
        settings = settings.with_values(overrides, "command line")
    return _checked(settings)


def _checked(s: KafkaSettings) -> KafkaSettings:
    if s.uses_sasl and not (s.sasl_username and s.sasl_password):
        raise KafkaConfigError(
            f"security.protocol={s.security_protocol} needs sasl.username and sasl.password "
            "(or sasl.jaas.config)"
        )
    if bool(s.ssl_certificate_location) != bool(s.ssl_key_location):
        raise KafkaConfigError(
            "ssl.certificate.location and ssl.key.location go together (mutual TLS)"
        )
    if not s.uses_tls:
        given = [f.name for f in fields(s) if f.name.startswith("ssl_") and getattr(s, f.name)]
        given = [g for g in given if g != "ssl_check_hostname"]
        if given:
            key = given[0].replace("_", ".")
            raise KafkaConfigError(
                f"{key} is set but security.protocol={s.security_protocol} does not use TLS"
            )
    for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
        value = getattr(s, name)
        if value and not Path(value).is_file():
            raise KafkaConfigError(f"{name.replace('_', '.')}: no such file: {value}")
    return s


def write_properties(settings: KafkaSettings, path: str | os.PathLike[str]) -> Path:
    """Write `settings` as a client.properties file readable by its owner only, for a child
    process (a worker started by replay or the demo) to use the same connection."""
    values = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
        "ssl.endpoint.identification.algorithm": "https" if settings.ssl_check_hostname else "",
    }
    for key, name in {**_STRING_KEYS, **_SECRET_KEYS, **_INT_KEYS}.items():
        value = getattr(settings, name)
        if value is not None and key not in values:
            values[key] = value.reveal() if isinstance(value, Secret) else str(value)
    if not settings.uses_sasl:
        values.pop("sasl.mechanism", None)
    if not settings.uses_tls:
        values.pop("ssl.endpoint.identification.algorithm")
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for key, value in values.items():
            escaped = value.replace("\\", "\\\\").replace("\n", "\\n")
            out.write(f"{key}={escaped}\n")
    return path
