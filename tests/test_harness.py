"""stream_app/harness.py: a worker process runs the packages of its `code_root`.

Benchmarks compare two checkouts by starting workers from each; if the working directory's
packages won, both sides would run the same code and every comparison would read 1.00x.
"""

from __future__ import annotations

from stream_app.harness import WorkerProcess


def test_a_worker_process_runs_the_packages_of_its_code_root(tmp_path, monkeypatch):
    other = tmp_path / "other-checkout"
    (other / "stream_app").mkdir(parents=True)
    (other / "stream_app" / "__init__.py").write_text("")
    marker = tmp_path / "ran"
    write_marker = f"pathlib.Path({str(marker)!r}).write_text(stream_app.__file__)"
    main = other / "stream_app" / "__main__.py"
    main.write_text(f"import pathlib, stream_app\n{write_marker}\n")
    # Started from this checkout's root, as the benchmarks are.
    monkeypatch.chdir(WorkerProcess.code_root)
    worker = WorkerProcess([], tmp_path / "worker.log", code_root=other)
    worker.start()
    assert worker.proc is not None
    assert worker.proc.wait(timeout=60) == 0, worker.tail()
    assert marker.read_text() == str(other / "stream_app" / "__init__.py")
