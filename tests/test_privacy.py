"""Privacy as tests: nothing connects beyond loopback, and patient text stays out of the
feedback store unless the user opts in.

The main job's test (tests/test_runner.py) and the artifact-building fault tests
(tests/test_faults.py) run inside a loopback-only network namespace with every connect()
recorded (conftest.isolated); here the recording itself is shown to catch an outside
connection, so those checks cannot pass by seeing nothing.
"""
import subprocess
import sys

import pytest

from conftest import isolated, network_namespace_reason, outside_connections
from medwb.apps import feedback

TRY_BOTH = """
import socket
for host in ("127.0.0.1", "192.0.2.1"):  # loopback, then an outside address (TEST-NET-1)
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, 9))
    except OSError as e:
        print(host, e.errno)
    s.close()
"""


def test_the_recording_catches_an_outside_connection_and_the_namespace_blocks_it(tmp_path):
    reason = network_namespace_reason()
    if reason:
        pytest.skip(reason)
    log = tmp_path / "net.jsonl"
    command, env = isolated([sys.executable, "-c", TRY_BOTH], log)
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    errors = dict(line.split() for line in out.stdout.splitlines())
    assert errors == {"127.0.0.1": "111", "192.0.2.1": "101"}  # refused locally; outside: network unreachable
    bad = outside_connections(log)
    assert [b["address"][0] for b in bad] == ["192.0.2.1"]


def test_without_opt_in_no_patient_text_is_in_the_database_bytes(tmp_path):
    """Inputs, answers and the grounding flags' words; the database, its WAL and shared
    memory file, read while the store is open (so the WAL still holds the writes)."""
    case = {"chief_complaint": "反复咳嗽咳痰十年加重三天", "history": "吸烟四十年每日二十支"}
    answer = "初步诊断：慢性阻塞性肺疾病急性加重期；诊断依据：长期吸烟史"
    texts = [case["chief_complaint"], case["history"], answer, "慢性阻塞性肺疾病"]
    for store_text in (False, True):
        db = tmp_path / f"fb-{store_text}.sqlite"
        store = feedback.FeedbackStore(db, store_text=store_text)
        rid = store.new_round("differential_diagnosis", "s", case, "template", 64)
        oid = store.new_output(rid, 0, {"label": "m", "backend": "openvino", "precision": "int8"})
        store.finish_output(oid, "ok", answer, flags=[{"kind": "finding", "start": 5, "end": 13,
                                                       "text": "慢性阻塞性肺疾病"}])
        store.action("like", rid, oid)
        raw = b"".join(p.read_bytes() for p in tmp_path.glob(f"fb-{store_text}.sqlite*"))
        found = [t for t in texts if t.encode("utf-8") in raw]
        store.close()
        if store_text:
            assert found == texts  # the check can see text where it is stored
        else:
            assert found == [], f"patient text stored without opt-in: {found}"
