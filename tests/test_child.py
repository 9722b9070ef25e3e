"""Results from child processes travel through a file, whatever the child prints."""
import sys

import pytest

from medwb import child, envs


def test_result_survives_noise_printed_after_it():
    code = ("from medwb.child import write_result\n"
            "print('progress 1/2')\n"
            "write_result({'ir': '/x', 'ok': True})\n"
            "print('{\"looks\": \"like json\"}')\n"
            "import sys; print('warning: late library noise', file=sys.stderr)\n")
    assert child.run([sys.executable, "-c", code]) == {"ir": "/x", "ok": True}


def test_no_result_and_failure_are_errors_naming_the_cause():
    with pytest.raises(child.ChildError, match="exited without writing its result"):
        child.run([sys.executable, "-c", "print('{\"x\": 1}')"], what="demo")
    with pytest.raises(child.ChildError, match=r"`demo` failed: RuntimeError: boom"):
        child.run([sys.executable, "-c", "raise RuntimeError('boom')"], what="demo")
    with pytest.raises(child.ChildError, match="timed out after 1 s"):
        child.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)


def test_other_environment_query_uses_the_result_file():
    """The bigdl env's report comes back even though its libraries print as they import."""
    assert envs.available("bigdl"), "the bigdl environment is missing: run `make setup`"
    rep = envs.query_json("bigdl", ["-m", "medwb.sysinfo", "--env", "bigdl"], timeout=180)
    assert rep["versions"]["bigdl-llm"] == "2.4.0"


def test_a_result_path_that_is_a_pipe_or_device_is_written_into_never_replaced(tmp_path, monkeypatch):
    """MEDWB_RESULT_FILE=/dev/null once made the atomic rename swap the machine's /dev/null
    for a regular file (as root): a path that is not a regular file is written into."""
    import json
    import os
    import stat
    import threading

    from medwb import child
    fifo = tmp_path / "result.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text(encoding="utf-8")))
    reader.start()
    monkeypatch.setenv(child.RESULT_ENV, str(fifo))
    child.write_result({"ok": 1})
    reader.join(timeout=10)
    assert json.loads(got[0]) == {"ok": 1} and stat.S_ISFIFO(fifo.stat().st_mode)
