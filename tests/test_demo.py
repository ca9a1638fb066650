"""The demo: its building blocks, and one tiny end-to-end run against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from gru4stream.demo import QUICK, DemoConfig, build_parser, config_from_args, interleave, main


def test_interleave_keeps_every_click_and_each_sessions_order():
    sessions = [("a", ["1", "2", "3"]), ("b", ["4", "5"]), ("c", ["6"]), ("d", [])]
    stream = interleave(sessions, seed=3)
    assert len(stream) == 6
    for sid, items in sessions:
        assert [i for s, i in stream if s == sid] == items
    # Sessions overlap: some session is clicked on between two clicks of another.
    positions = [s for s, _ in stream]
    assert any(positions[i] != positions[i + 1] for i in range(len(positions) - 1))
    assert interleave(sessions, seed=3) == stream  # reproducible


def test_config_from_args_and_its_checks():
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--quick"])) == QUICK
    tiny = config_from_args(parser.parse_args(["--quick", "--v1-users", "7", "--rate", "5"]))
    assert isinstance(tiny, DemoConfig) and (tiny.v1_users, tiny.rate) == (7, 5.0)
    for bad in (["--v2-epochs", "0"], ["--session-clicks", "1"], ["--max-history", "1"]):
        with pytest.raises(ValueError):
            config_from_args(parser.parse_args(bad))
    with pytest.raises(SystemExit):
        main(["--rate", "0"])


def _demo_processes() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return {
        int(line.split()[0])
        for line in out.splitlines()[1:]
        if "-m stream_app" in line and "--app-id demo-" in line
    }


@pytest.mark.slow
def test_tiny_demo_end_to_end(kafka_bootstrap, tmp_path, capsys):
    before = _demo_processes()
    code = main(
        [
            "--bootstrap", kafka_bootstrap, "--workdir", str(tmp_path),
            "--v1-users", "20", "--v1-epochs", "1", "--v2-users", "30", "--v2-epochs", "1",
            "--stream-users", "8", "--session-clicks", "6", "--rate", "80",
            "--max-history", "20",
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "serving v0001" in out
    assert "worker swapped in" in out
    table = out.split("latency = answer - click):")[1]
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line[:1] == "v"}
    assert set(rows) == {"v0001", "v0002"}  # answers from both sides of the swap
    assert sum(int(r[1]) for r in rows.values()) == 8 * 6  # one answer per click
    assert "Worker stopped." in out
    assert (tmp_path / "models" / "PROMOTED").read_text().find("v0002") > 0
    leftover = _demo_processes() - before
    for pid in leftover:  # never leave a worker behind, even when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not leftover
