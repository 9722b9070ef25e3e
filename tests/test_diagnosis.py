"""#6 differential diagnosis: feedback store, prompt fitting, back-fill, workers, the app,
and notebook 04 with a broken model under papermill."""
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import papermill as pm
import pytest

from medwb import cli, runner
from medwb.apps.diagnosis import record as diagnosis
from medwb.apps import feedback, workers
from medwb.tasks import prompts
from medwb.apps.diagnosis.app import DiagnosisApp
from medwb.errors import MedwbError

CASE = "h010001"
MODEL = {"label": "m", "backend": "openvino-genai", "precision": "f32", "model_path": "/x", "fingerprint": "f"}
# Two quick OpenVINO workers of the demo model (the bigdl one runs in notebook 04's tests).
OV_MODELS = ["openvino-genai:int8/f32", "openvino-genai:int4/f32"]


# ------------------------------------------------------------------ feedback store

def test_store_is_wal_and_keeps_hashes_not_patient_text(tmp_path):
    store = feedback.FeedbackStore(tmp_path / "fb.sqlite")
    fields = diagnosis.case_fields(CASE)
    r = store.new_round("differential_diagnosis", "s1", fields, prompts.DIAGNOSIS_PROMPT, 200)
    o = store.new_output(r, 0, MODEL)
    store.finish_output(o, "ok", text="初步诊断：子宫肌瘤", ttft_ms=10.0, total_ms=100.0, new_tokens=20)
    store.action("like", r, o)
    assert sqlite3.connect(tmp_path / "fb.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rnd, out = store.rows("rounds")[0], store.rows("outputs")[0]
    assert rnd["inputs_json"] is None and len(rnd["inputs_hash"]) == 64 and rnd["origin"] == "ui"
    assert out["output_text"] is None and out["output_hash"] == feedback.text_hash("初步诊断：子宫肌瘤")
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert fields["present_history"].encode() not in raw and "子宫肌瘤".encode() not in raw
    # the same inputs hash the same within one database, differently in another (keyed hash)
    again = feedback.FeedbackStore(tmp_path / "fb.sqlite")
    other = feedback.FeedbackStore(tmp_path / "other.sqlite")
    assert again.inputs_hash(fields) == rnd["inputs_hash"] != other.inputs_hash(fields)


def test_store_keeps_text_only_when_opted_in(tmp_path):
    store = feedback.FeedbackStore(tmp_path / "fb.sqlite", store_text=True)
    r = store.new_round("differential_diagnosis", "s", {"chief_complaint": "胸痛3天"}, "t", 10)
    o = store.new_output(r, 0, MODEL)
    store.finish_output(o, "ok", text="答案")
    assert json.loads(store.rows("rounds")[0]["inputs_json"]) == {"chief_complaint": "胸痛3天"}
    assert store.rows("outputs")[0]["output_text"] == "答案"


@pytest.mark.parametrize("where", ["file_parent", "proc", "folder"])
def test_unwritable_feedback_db_is_refused_with_the_parameter_named(tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    path = {"file_parent": blocker / "fb.sqlite", "proc": Path("/proc/medwb/fb.sqlite"), "folder": tmp_path}[where]
    with pytest.raises(MedwbError, match=r"feedback_db .*(writ|folder)"):
        feedback.FeedbackStore(path)
    with pytest.raises(MedwbError, match="feedback_db"):  # the app refuses before starting any worker
        DiagnosisApp(OV_MODELS, feedback_db=str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_not_a_database_is_refused(tmp_path):
    bad = tmp_path / "notes.sqlite"
    bad.write_text("not sqlite " * 100)
    with pytest.raises(MedwbError, match="feedback_db .*cannot be opened"):
        feedback.FeedbackStore(bad)


def old_schema(version: int) -> str:
    """The schema as an older MedWB wrote it (columns and tables added since left out)."""
    import re
    added = {2: [",\n    machine_load    TEXT"], 3: [",\n    record_ref      TEXT", ",\n    flags_json        TEXT",
                                                  ",\n    sections_json     TEXT"],
             4: [",\n    writer            TEXT", ", 'interrupted'"]}
    schema = feedback.SCHEMA
    for v in range(version + 1, feedback.SCHEMA_VERSION + 1):
        for column in added[v]:
            assert column in schema
            schema = schema.replace(column, "")
    if version < 3:
        schema = re.sub(r"CREATE TABLE IF NOT EXISTS events \(.*?\);\n", "", schema, flags=re.S)
    return schema


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_older_store_is_upgraded_in_place_and_keeps_its_rows(tmp_path, version):
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(old_schema(version))
    conn.execute("INSERT INTO meta VALUES ('schema_version', ?), ('hash_key', ?)", (str(version), "ab" * 32))
    conn.execute("INSERT INTO rounds (workflow, session_id, origin, inputs_hash, template_hash, max_new_tokens,"
                 " created_at) VALUES ('diagnosis', 's', 'ui', 'h', 't', 8, 'now')")
    for status in ("ok", "running"):  # a finished answer, and one a killed kernel left running
        conn.execute("INSERT INTO outputs (round_id, slot, model_label, backend, precision, status, started_at)"
                     " VALUES (1, 0, 'm', 'openvino', 'int8', ?, 'now')", (status,))
    conn.execute("INSERT INTO actions (round_id, output_id, action, created_at) VALUES (1, 1, 'like', 'now')")
    conn.commit()
    conn.close()
    store = feedback.FeedbackStore(path)
    assert store._meta("schema_version") == str(feedback.SCHEMA_VERSION)
    old = store.rows("rounds")
    assert len(old) == 1 and old[0]["machine_load"] is None and old[0]["record_ref"] is None
    # every row kept (version 4 copies the outputs table), the old running answer interrupted
    assert [(o["status"], o["writer"]) for o in store.rows("outputs")] == [("ok", None), ("interrupted", None)]
    assert store.interrupted == 1 and store.rows("actions")[0]["output_id"] == 1
    assert store._conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rid = store.new_round("diagnosis", "s", {"chief_complaint": "x"}, "t", 8, machine_load={"quiet": True},
                          record_ref="c1")
    assert json.loads(store.rows("rounds")[-1]["machine_load"]) == {"quiet": True} and rid == 2
    store.event("differential_diagnosis", "s", "ui", "c1", "open", rid)  # the events table of version 3
    assert store.rows("events")[0]["round_id"] == rid
    store.close()


def test_concurrent_writers_lose_nothing(tmp_path):
    """Button callbacks, worker threads and a second process-like connection at once."""
    path = tmp_path / "fb.sqlite"
    a, b = feedback.FeedbackStore(path), feedback.FeedbackStore(path)
    r = a.new_round("differential_diagnosis", "s", {"chief_complaint": "x"}, "t", 10)
    o = a.new_output(r, 0, MODEL)

    def hammer(store, action):
        for _ in range(60):
            store.action(action, r, o)
    threads = [threading.Thread(target=hammer, args=(s, act)) for s in (a, b) for act in ("view", "copy")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(a.rows("actions")) == 240


def test_summary_counts_latest_vote_adoption_and_errors(tmp_path, capsys):
    store = feedback.FeedbackStore(tmp_path / "fb.sqlite")
    for round_no in range(2):
        r = store.new_round("differential_diagnosis", "s", {"chief_complaint": str(round_no)}, "t", 10)
        a = store.new_output(r, 0, {**MODEL, "label": "A"})
        b = store.new_output(r, 1, {**MODEL, "label": "B"})
        store.finish_output(a, "ok", text="a", ttft_ms=10.0, total_ms=110.0, new_tokens=11)
        store.finish_output(b, "error", error="boom") if round_no else store.finish_output(b, "ok", text="b")
        store.action("like", r, a)
        if round_no == 0:
            store.action("dislike", r, a)       # changed their mind: the latest vote counts
            store.action("backfill", r, a)
            store.action("backfill", r, a)      # twice on one answer: adopted once
            store.action("report_error", r, b, category=feedback.ERROR_CATEGORIES[0])
    table = feedback.summary(tmp_path / "fb.sqlite")
    assert table.loc["A", "likes"] == 1 and table.loc["A", "dislikes"] == 1 and table.loc["A", "like_rate"] == 0.5
    assert table.loc["A", "adoption_rate"] == 0.5 and table.loc["A", "median_tok_s"] == 100.0
    assert table.loc["B", "failed"] == 1 and table.loc["B", "error_reports"] == 1
    assert feedback.summary(tmp_path / "fb.sqlite", origin="scripted").empty
    assert cli.main(["feedback", str(tmp_path / "fb.sqlite"), "--csv"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("A,2,2,0,1,1,0.5,1,0.5")
    assert cli.main(["feedback", str(tmp_path / "missing.sqlite")]) == 2


# ------------------------------------------------------------------ workflow logic

def test_empty_chief_complaint_is_refused():
    with pytest.raises(MedwbError, match="主诉 .*chief complaint.* is empty"):
        diagnosis.check_inputs({**diagnosis.case_fields(CASE), "chief_complaint": "  "})


def test_long_inputs_are_cut_to_the_context_with_a_warning(demo_model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    encode = lambda text: tok(text)["input_ids"]  # noqa: E731
    fields = diagnosis.case_fields(CASE)
    prompt, ids, warning = diagnosis.fit_prompt(fields, encode, 2048, 200)
    assert warning is None and ids == encode(prompt)
    long = {**fields, "auxiliary_exams": "血常规：白细胞12.1×10^9/L。" * 400, "present_history": "反复腹痛。" * 200}
    prompt, ids, warning = diagnosis.fit_prompt(long, encode, 1024, 200)
    assert ids == encode(prompt) and len(ids) <= 1024 - 200
    assert "已截断" in warning and "辅助检查" in warning and "1024" in warning
    assert fields["chief_complaint"] in prompt and prompt.endswith(prompts.ASSISTANT_MARK)
    with pytest.raises(MedwbError, match="max_new_tokens"):
        diagnosis.fit_prompt(fields, encode, 256, 250)


def test_backfill_replaces_the_mark_then_the_previous_pick():
    record = diagnosis.course_record(diagnosis.case_fields(CASE))
    first, span = diagnosis.backfill(record, "初步诊断：A")
    assert diagnosis.INSERT_MARK not in first and first[span[0]:span[1]] == "初步诊断：A"
    second, span2 = diagnosis.backfill(first, "初步诊断：B<x>", (*span, "初步诊断：A"))
    assert "初步诊断：A" not in second and second.endswith(record.split(diagnosis.INSERT_MARK)[1])
    assert "<mark title='一键回填'>初步诊断：B&lt;x&gt;</mark>" in diagnosis.highlight(second, span2)
    edited = second.replace("初步诊断：B<x>", "医生改写")  # the doctor edited it: appended instead
    third, span3 = diagnosis.backfill(edited, "C", (*span2, "初步诊断：B<x>"))
    assert "医生改写" in third and third[span3[0]:span3[1]].strip() == "C"


@pytest.mark.parametrize("item, message", [
    ("openvino-genai:int3/f32", r"models\[0\].*weights 'int3'"),
    ("bigdl:nf4", r"models\[0\].*not supported on CPU"),
    ("bigdl-cli:int4", "one-shot command-line tool"),
    ("tensorrt:fp16", r"backend 'tensorrt' is unknown"),
])
def test_bad_model_entries_are_named(item, message):
    with pytest.raises(MedwbError, match=message):
        workers.parse_model(item, 0)


def test_app_parameters_are_checked_before_anything_starts(tmp_path):
    db = str(tmp_path / "fb.sqlite")
    with pytest.raises(MedwbError, match="models must be a non-empty list"):
        DiagnosisApp([], feedback_db=db)
    with pytest.raises(MedwbError, match="case_id 'nope' is not a bundled case"):
        DiagnosisApp(OV_MODELS, case_id="nope", feedback_db=db)
    with pytest.raises(MedwbError, match="max_new_tokens must be a positive integer"):
        DiagnosisApp(OV_MODELS, max_new_tokens=0, feedback_db=db)
    with pytest.raises(MedwbError, match="lists a model twice"):
        DiagnosisApp(OV_MODELS * 2, feedback_db=db)
    with pytest.raises(MedwbError, match="template: unknown placeholder"):
        DiagnosisApp(OV_MODELS, template="{patient_name}", feedback_db=db)
    app = DiagnosisApp(OV_MODELS, case_id=CASE, feedback_db=db)  # not started: no worker runs
    assert app.inputs["chief_complaint"].value == diagnosis.case_fields(CASE)["chief_complaint"]
    assert diagnosis.INSERT_MARK in app.record_editor.value
    app.case_picker.value = ""  # a case typed in by hand: the form empties
    assert app.fields()["chief_complaint"] == "" and app.record_editor.value == ""
    app.generate_button.click()
    assert "主诉 (chief complaint) is empty" in app.status_text and not app.store.rows("rounds")
    app.close()


# ------------------------------------------------------------------ the app with real workers

@pytest.fixture
def app(tmp_path, demo_model_dir):
    app = DiagnosisApp(OV_MODELS, max_new_tokens=48, case_id=CASE, run_dir=str(tmp_path))
    app.start()
    yield app
    app.close()


def test_back_to_back_rounds_lose_no_action(app):
    assert [w["state"] for w in app.wait_ready(300)] == ["ready", "ready"]
    pids = [w.info["pid"] for w in app.workers]
    first = app.generate()
    app.wait(300)
    assert [c.status for c in app.cards] == ["ok", "ok"] and all(c.text for c in app.cards)
    assert all(c.n_chunks > 5 for c in app.cards)  # streamed into the cards, not delivered at the end
    for slot in (0, 1):
        app.cards[slot].view_button.click()
        app.cards[slot].like_button.click()
    app.cards[1].backfill_button.click()
    # copy: the copy box, and the clipboard script set as the Output widget's outputs (not shown
    # inside `with clipboard:`, which hung notebook 04 under papermill; medwb.apps.core.copy)
    app.cards[0].copy_button.click()
    script = app.clipboard.outputs[0]["data"]["application/javascript"]
    assert app.copy_area.value == app.cards[0].text and json.dumps(app.cards[0].text) in script
    # the doctor edits and regenerates twice in a row, while still clicking on round 1's answers
    round1_outputs = [c.output_id for c in app.cards]
    app.inputs["present_history"].value += "近3日加重。"
    second = app.generate()
    clicks = threading.Thread(target=lambda: [app.store.action("copy", first, o) for o in round1_outputs * 10])
    clicks.start()
    app.inputs["past_history"].value = "高血压病史5年。"
    third = app.generate()
    clicks.join()
    app.wait(300)
    rounds = {r["round_id"]: r for r in app.store.rows("rounds")}
    assert rounds[second]["parent_round_id"] == first and rounds[third]["parent_round_id"] == second
    assert len({r["inputs_hash"] for r in rounds.values()}) == 3
    outputs = app.store.rows("outputs")
    assert len(outputs) == 6 and not [o for o in outputs if o["status"] == "running"]
    assert {o["status"] for o in outputs if o["round_id"] == third} == {"ok"}
    assert {o["status"] for o in outputs if o["round_id"] == second} <= {"ok", "cancelled"}
    counts = app.stored_counts()["actions"]
    assert counts == {"view": 2, "like": 2, "backfill": 1, "copy": 21, "regenerate": 2}
    assert [w.info["pid"] for w in app.workers] == pids  # started once, reused
    with pytest.raises(MedwbError, match="error category"):
        app.report_error(0, "nonsense")


@pytest.mark.slow  # 10-16 s (AVX2-only EPYC): kept out of the 3-minute tier
def test_a_slow_or_dead_model_fails_in_its_card_and_restarts(app):
    app.wait_ready(300)
    app.workers[0].generate_timeout_s = 0.01
    app.max_new_tokens = 200  # long enough for the watchdog (0.2 s polls) to see it run over
    app.generate()
    results = app.wait(300)
    assert results[0]["status"] == "timeout" and "generate_timeout_s" in results[0]["error"]
    assert results[1]["status"] == "ok"
    assert "timeout" in app.cards[0].body.value
    app.workers[0].generate_timeout_s = 300
    app.generate()
    assert [r["status"] for r in app.wait(300)] == ["ok", "ok"] and app.workers[0].restarts == 1
    # a worker that dies (here: killed) is reported and started again at the next round
    os.kill(app.workers[1].info["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while app.workers[1].state != "failed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "worker exited" in app.workers[1].error
    app.generate()
    assert [r["status"] for r in app.wait(300)] == ["ok", "ok"] and app.workers[1].restarts == 1


# ------------------------------------------------------------------ notebook 04 under papermill

@pytest.mark.slow  # 10-16 s (AVX2-only EPYC): kept out of the 3-minute tier
def test_notebook_with_a_broken_model_path_still_shows_the_others(tmp_path, demo_model_dir):
    nb = Path(runner.NOTEBOOKS_DIR) / "04_differential_diagnosis.ipynb"
    models = OV_MODELS + [f"bigdl:sym_int4@{tmp_path / 'no-such-model'}"]
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), kernel_name="medwb-main", cwd=str(tmp_path),
                        parameters={"run_dir": str(tmp_path), "models": models, "max_new_tokens": 48},
                        progress_bar=False)
    con = sqlite3.connect(tmp_path / "feedback.sqlite")
    rows = con.execute("SELECT round_id, model_label, status, error FROM outputs ORDER BY output_id").fetchall()
    assert [r[2] for r in rows] == ["ok", "ok", "error"] * 3  # a bundled case, the next patient typed, long
    assert "no-such-model" in rows[2][3] and "does not exist" in rows[2][3]
    # the grounding checker marked each answer's 诊断依据: flags stored (kind and position) with the output
    flags = [json.loads(f) for (f,) in con.execute("SELECT flags_json FROM outputs WHERE status = 'ok'")]
    assert len(flags) == 6 and all(isinstance(f, list) and all(set(x) == {"kind", "start", "end"} for x in f)
                                   for f in flags)
    assert {e for (e,) in con.execute("SELECT DISTINCT event FROM events")} == {"open"}
    actions = {a for (a,) in con.execute("SELECT DISTINCT action FROM actions")}
    assert actions == set(feedback.ACTIONS)
    assert {o for (o,) in con.execute("SELECT DISTINCT origin FROM rounds")} == {"scripted"}
    text = json.dumps(json.loads((tmp_path / nb.name).read_text(encoding="utf-8"))["cells"], ensure_ascii=False)
    assert "no-such-model" in text and "已截断" in text and "主诉 (chief complaint) is empty" in text
    assert (tmp_path / "feedback_summary.csv").exists()
