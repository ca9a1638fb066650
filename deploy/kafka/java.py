"""The broker's Java side: its jars (fetched once with Maven), the `java` binary, and the
telling line of Java's output for an error message."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from deploy.kafka.config import MIN_JAVA, POM, BrokerConfig, BrokerError

log = logging.getLogger(__name__)


def ensure_jars(config: BrokerConfig | None = None) -> Path:
    """The directory holding the broker's jars, fetched from Maven Central on first use."""
    config = config or BrokerConfig()
    lib = config.lib_dir
    marker = lib / ".complete"
    if marker.is_file():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("`mvn` (Apache Maven) is not on the PATH; it fetches the Kafka jars")
    staging = lib.parent / f"lib.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        f"-Dkafka.version={config.version}",
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    log.info("fetching Kafka %s jars into %s", config.version, lib)
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 or not any(staging.glob(f"kafka_2.13-{config.version}.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(
            f"fetching Kafka {config.version} jars with Maven failed: "
            + _last_error_line(proc.stdout + proc.stderr)
        )
    (staging / ".complete").write_text(config.version + "\n")
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    return lib


def _last_error_line(output: str) -> str:
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in output.splitlines()]
    errors = [ln for ln in lines if ln.startswith("[ERROR]") and len(ln) > 8]
    picked = errors[0] if errors else next((ln for ln in reversed(lines) if ln), "no output")
    return picked[:300]


# --- java ------------------------------------------------------------------------------------


def check_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(f"`java` is not on the PATH; the Kafka broker needs Java {MIN_JAVA}+")
    proc = subprocess.run([java, "-version"], capture_output=True, text=True)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', proc.stderr + proc.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_x" style
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise BrokerError(f"Java {major} found; the Kafka broker needs Java {MIN_JAVA}+")
    return java


_EXCEPTION_LINE = re.compile(r"^(Caused by: )?([\w$]+\.)+[\w$]*(Exception|Error)\b")


def java_error(text: str) -> str | None:
    """The most telling line of Java output: the last exception message, else an ERROR line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lines = [ln.removeprefix('Exception in thread "main" ') for ln in lines]
    exceptions = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    if exceptions:
        return exceptions[-1][:300]
    errors = [i for i, ln in enumerate(lines) if " ERROR " in ln or ln.startswith("Error")]
    if not errors:
        return None
    i = errors[-1]
    if lines[i].startswith("Error") and i + 1 < len(lines):  # the JVM's reason is below
        return f"{lines[i]}: {lines[i + 1]}"[:300]
    return lines[i][:300]
