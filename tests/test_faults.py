"""Faults: a killed app, several writers at once, a full disk, a killed export.

Each test breaks something on purpose and checks what the README's fault list promises
(section "Faults and what each guarantees").
"""
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from medwb import envs
from medwb.apps import feedback

from conftest import REPO, isolated, outside_connections

# A process writing to the feedback store as an app does: a round, one answer left running,
# then doctor actions, printing each action's id only after its transaction committed.
pytestmark = pytest.mark.slow  # loads or converts models, runs notebooks or servers

WRITER = r"""
import sys
from medwb.apps import feedback
store = feedback.FeedbackStore(sys.argv[1])
rid = store.new_round("differential_diagnosis", "s", {"chief_complaint": "x"}, "t", 8)
oid = store.new_output(rid, 0, {"label": sys.argv[2], "backend": "openvino", "precision": "int8"})
print("output", oid, flush=True)
for _ in range(int(sys.argv[3])):
    print("action", store.action("view", rid, oid), flush=True)
print("done", flush=True)
sys.stdin.read()  # hold the answer running until told to finish
store.finish_output(oid, "ok", "answer")
"""


def _writer(db, label, n):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(db), label, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def test_a_killed_app_loses_no_committed_action_and_its_answers_are_marked_interrupted(tmp_path):
    db = tmp_path / "feedback.sqlite"
    feedback.FeedbackStore(db).close()  # set up once, as the app server does before its pages
    killed, other = _writer(db, "killed", 10**6), _writer(db, "other", 300)
    # Both have opened the store and started an answer before the kill (a store opened after
    # it would itself mark the dead writer's answer, as the test's does below).
    other_lines = [other.stdout.readline().split()]
    assert other_lines[0][0] == "output"
    committed = []
    for line in killed.stdout:  # the app is killed in the middle of writing, SIGKILL: no clean-up
        kind, value = line.split()
        if kind == "action":
            committed.append(int(value))
        if len(committed) >= 100:
            killed.send_signal(signal.SIGKILL)
            break
    killed.wait()
    for line in other.stdout:
        other_lines.append(line.split())
        if line.strip() == "done":
            break
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {a for (a,) in con.execute("SELECT action_id FROM actions")}
    assert set(committed) <= stored  # every action committed before the kill
    others = [int(p[1]) for p in other_lines if p[0] == "action"]
    assert len(others) == 300 and set(others) <= stored  # the other writer lost nothing
    con.close()

    store = feedback.FeedbackStore(db)  # next opened: the dead writer's answer is interrupted,
    status = {o["model_label"]: o for o in store.rows("outputs")}  # the live one's still running
    assert store.interrupted == 1
    assert status["killed"]["status"] == "interrupted" and "ended before" in status["killed"]["error"]
    assert status["other"]["status"] == "running"
    store.close()
    other.communicate("")  # the live writer finishes its answer as usual
    assert other.returncode == 0
    store = feedback.FeedbackStore(db)
    assert {o["model_label"]: o["status"] for o in store.rows("outputs")} == {"killed": "interrupted", "other": "ok"}
    assert store.interrupted == 0
    store.close()


def test_a_writer_is_alive_only_while_its_process_is(tmp_path):
    me = feedback.writer_id()
    assert feedback.writer_alive(me)
    proc = subprocess.run([sys.executable, "-c", "from medwb.apps import feedback; print(feedback.writer_id())"],
                          capture_output=True, text=True, check=True)
    assert not feedback.writer_alive(proc.stdout.strip())  # that process has ended
    host, boot, pid, start = me.rsplit(":", 3)
    assert not feedback.writer_alive(f"{host}:{boot}:{pid}:{int(start) + 1}")  # same pid, another process
    assert not feedback.writer_alive(f"{host}:another-boot:{pid}:{start}")  # before a restart
    assert feedback.writer_alive(f"another-host:{boot}:{os.getpid()}:{start}")  # cannot tell: left alone
    assert not feedback.writer_alive(None)


# --------------------------------------------------------------------- artifact building
def _file_limit(max_bytes):
    """A disk that fills up, for one process: writes past max_bytes fail (EFBIG)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))
    return limit


def _build(env, module_args, net_log, limit=None, popen=False):
    """A converter as the workbench runs it (a fresh process in its environment), inside a
    loopback-only network namespace with its connect() calls recorded in ``net_log``."""
    python = sys.executable if env == "main" else str(envs.python_of(env))
    command, environ = isolated([python, "-m", *map(str, module_args)], net_log,
                                env={**os.environ, "MEDWB_RESULT_FILE": str(net_log) + ".result.json"})
    if popen:
        return subprocess.Popen(command, cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True, preexec_fn=limit,
                          timeout=900)


def _leftovers(folder, name):
    return sorted(p.name for p in folder.glob(f".{name}.*"))


def test_a_killed_or_disk_full_ir_export_is_never_reused_and_the_next_run_rebuilds(tmp_path, demo_model_dir):
    from medwb.backends.toolchain import openvino_export as oe
    out, net = tmp_path / "int8", tmp_path.parent / f"{tmp_path.name}-net.jsonl"
    args = ["medwb.backends.toolchain.openvino_export", demo_model_dir, out, "int8"]
    # 1. Killed (SIGKILL) while it writes: the artifact never appears; its folder is left.
    proc = _build("main", args, net, popen=True)
    deadline = time.monotonic() + 300
    while not any(any(p.iterdir()) for p in tmp_path.glob(".int8.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and _leftovers(tmp_path, "int8")
    # 2. The disk fills up during the next export: it fails with one line and keeps nothing
    #    (the killed build's folder is removed first: its process is gone).
    full = _build("main", args, net, limit=_file_limit(256 * 1024))
    assert full.returncode != 0 and not out.exists() and _leftovers(tmp_path, "int8") == []
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("medwb: error:") and "disk" in last and "nothing was kept" in last, full.stderr[-1500:]
    # 3. The next run rebuilds it whole, and it loads.
    ok = _build("main", args, net)
    assert ok.returncode == 0, ok.stderr[-1500:]
    assert oe.is_complete(out) and _leftovers(tmp_path, "int8") == []
    import openvino as ov
    ov.Core().read_model(str(out / "openvino_model.xml"))
    assert outside_connections(net) == []  # the export (optimum, NNCF, tokenizers) stayed local


@pytest.mark.bigdl
def test_a_disk_full_low_bit_save_keeps_nothing_and_the_next_run_rebuilds(tmp_path, demo_model_dir):
    from medwb.backends.bigdl import is_low_bit_dir
    out, net = tmp_path / "bigdl-sym_int4", tmp_path.parent / f"{tmp_path.name}-net.jsonl"
    args = ["medwb.backends.bigdl", demo_model_dir, out, "sym_int4", 1]
    full = _build("bigdl", args, net, limit=_file_limit(256 * 1024))
    assert full.returncode != 0 and not out.exists() and _leftovers(tmp_path, out.name) == []
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith("medwb: error:") and "disk" in last and "nothing was kept" in last, full.stderr[-1500:]
    ok = _build("bigdl", args, net)
    assert ok.returncode == 0, ok.stderr[-1500:]
    assert is_low_bit_dir(out) == "sym_int4" and outside_connections(net) == []


def test_a_build_killed_long_ago_is_cleaned_up_and_a_live_one_is_left(tmp_path):
    from medwb.paths import atomic_dir
    final = tmp_path / "artifact"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".artifact.tmp-{dead}-abc").mkdir()  # a killed build's
    (tmp_path / f".artifact.old-{dead}").mkdir()  # killed between its two renames
    live = tmp_path / f".artifact.tmp-{os.getppid()}-xyz"  # a build still running (the parent)
    live.mkdir()
    other = tmp_path / f".artifact-g64.tmp-{dead}-abc"  # another artifact's: not this build's business
    other.mkdir()
    with atomic_dir(final) as tmp:
        (tmp / "x").write_text("whole")
    assert (final / "x").read_text() == "whole"
    assert _leftovers(tmp_path, "artifact") == [live.name] and other.exists()


# --------------------------------------------------------------------- memory
def test_work_that_does_not_fit_in_memory_is_refused_before_it_starts(tmp_path, demo_model_dir, monkeypatch):
    """Every conversion and the app's model pool, with MEDWB_MAX_RAM_GB set far below what
    they need: one line with the estimate and the memory, nothing written, no process."""
    from medwb.apps.diagnosis.app import DiagnosisApp
    from medwb.backends.toolchain import gguf_export, llm_cli
    from medwb.backends.toolchain import openvino_export as oe
    from medwb.apps import workers
    from medwb.errors import MedwbError
    workers.resolve_artifact(workers.parse_model("openvino-genai:int8/f32", 0))  # built (or cached) first
    monkeypatch.setenv("MEDWB_MAX_RAM_GB", "0.001")
    refused = r"needs about [\d.]+ GiB of RAM \(.+\) but 0\.0 GiB is allowed by MEDWB_MAX_RAM_GB: not started"
    for what, build in (("exporting", lambda out: oe.export(demo_model_dir, out, "int8")),
                        ("llm-convert of", lambda out: llm_cli.convert(demo_model_dir, out, "llama", "int4")),
                        ("to GGUF", lambda out: gguf_export.convert(demo_model_dir, out))):
        with pytest.raises(MedwbError, match=refused) as e:
            build(tmp_path / "out")
        assert what in str(e.value) and not (tmp_path / "out").exists()
    # bigdl's low-bit conversion, in its own environment as the routes run it
    proc = subprocess.run([str(envs.python_of("bigdl")), "-m", "medwb.backends.bigdl", str(demo_model_dir),
                           str(tmp_path / "low-bit"), "sym_int4", "1"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "MEDWB_RESULT_FILE": str(tmp_path / "result.json")}, timeout=600)
    assert proc.returncode == 2 and re.search(refused, proc.stderr.strip().splitlines()[-1]), proc.stderr[-800:]
    assert not (tmp_path / "low-bit").exists()
    # the app's models: each card says why; no model process is started
    app = DiagnosisApp(["openvino-genai:int8/f32"], max_new_tokens=8, run_dir=str(tmp_path / "app"))
    app.start()
    [state] = app.wait_ready(300)
    app.close()
    assert state["state"] == "failed" and state["pid"] is None and re.search(refused, state["error"]), state
    assert "loading openvino-genai:int8/f32" in state["error"]
    monkeypatch.setenv("MEDWB_MAX_RAM_GB", "lots")
    with pytest.raises(MedwbError, match="MEDWB_MAX_RAM_GB='lots': give a number of GiB"):
        oe.check_memory(demo_model_dir)


def test_two_processes_preparing_one_model_take_turns(tmp_path, demo_model_dir):
    """A notebook's benchmark, an evaluation and the app's workers may ask for the same
    artifact at once: variants.prepare converts one variant at a time per model folder, so a
    second process waits (and says so) instead of converting the same folder beside the first."""
    from medwb.backends import variants
    root = variants.artifacts_dir(demo_model_dir, str(tmp_path / "arts"))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom pathlib import Path\nfrom medwb.backends.variants import conversion_lock\n"
        f"with conversion_lock(Path({str(root)!r})):\n"
        "    print('holding', flush=True)\n    time.sleep(1.5)\n"
        f"    Path({str(root)!r}, 'converted').write_text('x')\n")],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "holding"
        said = []
        arts = variants.prepare(demo_model_dir, [{"backend": "pytorch", "precision": "fp32"}],
                                {"artifacts_dir": str(tmp_path / "arts")}, log=said.append)
        assert (root / "converted").exists(), "prepare went on while another process held the folder"
        assert any("another process is converting" in s for s in said), said
        assert arts["pytorch:fp32"]["path"] == demo_model_dir
    finally:
        assert holder.wait(30) == 0
    # Free again: no wait, nothing said.
    said.clear()
    variants.prepare(demo_model_dir, [{"backend": "pytorch", "precision": "fp32"}],
                     {"artifacts_dir": str(tmp_path / "arts")}, log=said.append)
    assert not said
