"""README's "A session by hand" block, run as written: it is the user's contract.

The block runs in bash (its `&` and `kill %1` as typed) in a temporary working directory,
since it writes runs/ and var/. One thing differs from a user's shell: `gru4stream` is a
wrapper on PATH that skips `gru4stream broker start|stop`, because the test session's broker
is shared (stopping it would stop every other test) and may not be the one `broker start`
would manage in this directory; every other subcommand runs the real command line, with
GRU4STREAM_BOOTSTRAP naming the test broker. And the worker's web port, 6066 in the block,
is a free one here (other tests or a developer's worker may hold 6066).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream_app.harness import free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WEB_PORT = 6066  # the block's --web-port

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WRAPPER = """#!/bin/sh
# tests/test_readme.py: the shared test broker is neither started nor stopped here.
if [ "$1" = broker ]; then echo "(test: 'gru4stream broker $2' skipped)"; exit 0; fi
exec {python} -c 'import sys; from gru4stream.cli import main; sys.exit(main())' "$@"
"""


def bash_blocks(section: str) -> list[str]:
    """The ```bash blocks of README's section titled `section` (any heading level)."""
    text = README.read_text()
    start = re.search(rf"^#+ {re.escape(section)}\s*$", text, re.M)
    assert start, f"README has no section {section!r}"
    end = re.search(r"^#+ ", text[start.end() :], re.M)
    body = text[start.end() : start.end() + end.start() if end else len(text)]
    return re.findall(r"```bash\n(.*?)```", body, re.S)


def test_the_session_by_hand_runs_as_written(tmp_path: Path, kafka_bootstrap: str) -> None:
    blocks = bash_blocks("A session by hand")
    assert blocks, "no bash block under 'A session by hand'"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "gru4stream"
    wrapper.write_text(WRAPPER.format(python=sys.executable))
    wrapper.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "GRU4STREAM_BOOTSTRAP": kafka_bootstrap,
    }
    for block in blocks:
        block = re.sub(rf"\b{WEB_PORT}\b", str(free_port()), block)
        # -e: a failing line fails the test (as a user would stop there); in a session of its
        # own, so whatever the block left running is ended below, by its process group.
        proc = subprocess.Popen(
            ["bash", "-e", "-o", "pipefail", "-c", block],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"the block did not finish in 240 s:\n{out[-4000:]}")
        finally:
            _end_group(proc.pid)
        assert proc.returncode == 0, f"the block failed ({proc.returncode}):\n{out[-4000:]}"
        assert '"version":"v0001"' in out.replace(" ", ""), out[-4000:]
        answered = re.findall(r"^gru4stream_recommendations_total\S* (\S+)$", out, re.M)
        assert answered and sum(float(v) for v in answered) > 0, out[-4000:]
    assert (work / "runs" / "ml1m" / "model" / "manifest.json").is_file()
    assert (work / "var" / "worker").is_dir()  # the worker's default data directory


def _end_group(pgid: int, timeout_s: float = 30.0) -> None:
    """Wait for the block's process group (the worker after `kill %1`) to go; kill it after."""
    deadline = time.monotonic() + timeout_s
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)
