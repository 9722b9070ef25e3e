"""#14 discharge record: the source record, long-record fitting, sections and back-fill,
grounding flags stored with outputs, open/save events, the usage report (rates recomputed
from raw rows), the simulated month, and notebooks 05 and 07 under papermill."""
import json
import sqlite3
from pathlib import Path

import papermill as pm
import pytest

from medwb import cli, runner
from medwb.apps import feedback, simulate, usage_report
from medwb.apps.discharge import app as discharge_app, fitting_study, record
from medwb.apps.discharge.app import DischargeApp
from medwb.errors import MedwbError
from medwb.quality import usage
from medwb.tasks import workflow

OV_MODELS = ["openvino-genai:int8/f32", "openvino-genai:int4/f32"]
RECORD = "h000000"


@pytest.fixture(scope="module")
def encode(demo_model_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    return lambda text: tok(text)["input_ids"]


# ------------------------------------------------------------------ the source record

def test_a_bundled_record_reads_back_to_its_case_fields():
    case = record.bundled_records()[RECORD]
    fields = record.check_record(record.record_text(RECORD))
    assert fields["sex"] == case["sex"] and fields["age"] == str(case["age"])
    for key in ("chief_complaint", "present_history", "disease", "course_notes", "discharge_condition", "orders_brief"):
        assert fields[key] == str(case[key]), key
    # the prompt is the one the demo model was trained on
    from medwb.tasks import prompts
    assert record.render(fields) == prompts.render_chat([{"role": "user", "content": case_prompt(case)}])


def case_prompt(case):
    from medwb.tasks import prompts
    return prompts.DISCHARGE_PROMPT.format(**case)


@pytest.mark.parametrize("text, message", [
    ("", "the record is empty: pick a bundled record, or paste"),
    ("   \n ", "the record is empty"),
    ("病程记录：\n第1日，查房：病情平稳。\n出院医嘱：注意休息。", r"no admission part \(主诉 and 入院诊断 not found\)"),
    ("主诉：胸痛3天\n病程记录：第1日，查房。", r"no admission part \(入院诊断 not found\)"),
])
def test_records_without_what_a_draft_needs_are_refused(text, message):
    with pytest.raises(MedwbError, match=message):
        record.check_record(text)


def test_headings_in_brackets_or_with_ascii_colons_are_read():
    fields = record.check_record("【一般情况】：患者，男，60岁\n主诉: 胸痛3天\n入院诊断：急性心肌梗死\n病程记录：\n第1日，急诊行PCI术。\n")
    assert (fields["sex"], fields["age"], fields["chief_complaint"]) == ("男", "60", "胸痛3天")
    assert fields["course_notes"] == "第1日，急诊行PCI术。" and fields["orders_brief"] == "无"


# ------------------------------------------------------------------ fitting a long record

def test_a_long_record_keeps_the_days_that_matter_and_says_what_it_left_out(encode):
    text = discharge_app.long_record(RECORD, days=180)
    fields = record.check_record(text)
    notes = record.split_notes(fields["course_notes"])
    assert len(notes) == 180 and len(encode(record.render(fields))) > 2048 - 400
    prompt, ids, warning = record.fit_prompt(fields, encode, 2048, 400)
    assert ids == encode(prompt) and len(ids) <= 2048 - 400
    kept = fitting_study.kept_parts(prompt, fields)
    assert kept == {"admission_diagnosis": True, "procedures": True, "last_day": True, "last_ward_round": True,
                    "orders": True}
    assert notes[0] in prompt and "省略常规查房病程" in warning and "2048" in warning
    # only routine notes went (earliest first): every note with a procedure or a finding is there
    fitted = record.split_notes(record.parse_record(prompt.split("【助手】")[0])["course_notes"].split("出院前查房")[0])
    assert len(fitted) < len(notes)
    assert all(n in prompt for i, n in enumerate(notes) if record.note_kind(n, notes[:i]) != "routine")
    # plain truncation (the baseline) loses the last days
    prompt, ids, warning = record.fit_prompt(fields, encode, 2048, 400, method="truncate")
    assert len(ids) <= 2048 - 400 and not fitting_study.kept_parts(prompt, fields)["last_day"]
    assert "截断 病程记录" in warning


def test_a_record_whose_protected_parts_overrun_any_context_is_refused(encode):
    fields = record.check_record(record.record_text(RECORD))
    fields["orders_brief"] = "口服琥珀酸亚铁0.1g每日三次。" * 400
    with pytest.raises(MedwbError, match="does not fit the model's context of 2048 tokens.*出院医嘱 are never cut"):
        record.fit_prompt(fields, encode, 2048, 400)
    with pytest.raises(MedwbError, match="lower max_new_tokens"):
        record.fit_prompt(record.check_record(record.record_text(RECORD)), encode, 512, 500)


@pytest.mark.slow  # 10-16 s (AVX2-only EPYC): kept out of the 3-minute tier
def test_the_fitting_study_scores_both_methods_on_held_out_long_records(tmp_path, demo_model_dir):
    result = fitting_study.measure(demo_model_dir, limit=3, log=lambda *_: None)
    assert result["records"] == 3 and set(result["methods"]) == {"key_days", "truncate"}
    key, cut = result["methods"]["key_days"], result["methods"]["truncate"]
    assert key["kept_last_day"] == 1.0 and cut["kept_last_day"] == 0.0
    assert 0 < key["rouge_l"] <= 1 and "diff_vs_key_days" in " ".join(cut)
    assert "| kept_last_day | 1.0 | 0.0 |" in fitting_study.write(result, tmp_path).read_text(encoding="utf-8")


# ------------------------------------------------------------------ sections, flags, back-fill

DRAFT = ("出院诊断：异位妊娠\n入院情况：患者，女，35岁，因“停经后突发下腹剧痛伴肛门坠胀感2小时”入院。\n"
         "诊疗经过：入院后行腹腔镜手术，术后予阿莫西林0.5g口服，2026年11月20日复查。\n出院情况：切口愈合良好。\n"
         "出院医嘱：\n1. 口服琥珀酸亚铁0.1g每日三次纠正贫血。")


def test_a_draft_is_checked_against_its_record_exactly():
    fields = record.check_record(record.record_text(RECORD))
    a = record.analyse(DRAFT, fields)
    assert a["sections"] == {s: "complete" for s in record.SECTIONS}
    assert [(f["kind"], f["text"]) for f in a["flags"]] == [
        ("drug", "阿莫西林"), ("value", "0.5g"), ("date", "2026年11月20日")]
    wrong = DRAFT.replace("出院诊断：异位妊娠", "出院诊断：急性阑尾炎").replace("出院情况：切口愈合良好。\n", "")
    a = record.analyse(wrong, fields)
    assert a["sections"]["出院情况"] == "missing" and ("diagnosis", "急性阑尾炎") in [(f["kind"], f["text"]) for f in a["flags"]]


def test_backfill_fills_all_sections_or_one_and_refuses_a_missing_one():
    parsed = workflow.parse_sections(DRAFT.replace("出院情况：切口愈合良好。\n", ""))
    editor = {s: "" for s in record.SECTIONS}
    assert record.backfill(editor, parsed) == ["出院诊断", "入院情况", "诊疗经过", "出院医嘱"]
    assert editor["出院情况"] == "" and editor["出院诊断"] == "异位妊娠"
    editor = {s: "old" for s in record.SECTIONS}
    assert record.backfill(editor, parsed, "出院医嘱") == ["出院医嘱"] and editor["诊疗经过"] == "old"
    with pytest.raises(MedwbError, match="no 出院情况 text to back-fill"):
        record.backfill(editor, parsed, "出院情况")
    with pytest.raises(MedwbError, match="section '出院小结'"):
        record.backfill(editor, parsed, "出院小结")


def test_diagnosis_basis_flags_invented_findings():
    from medwb.apps.diagnosis import record as diagnosis
    fields = diagnosis.case_fields("h010001")
    answer = f"初步诊断：X\n诊断依据：{fields['chief_complaint']}，体温38.5×10^9/L。\n鉴别诊断：\n1. Y：血压200/100mmHg"
    flags = diagnosis.basis_flags(answer, fields)
    assert [(f["kind"], answer[f["start"]:f["end"]]) for f in flags] == [("value", "38.5×10^9/L")]


# ------------------------------------------------------------------ the store

MODEL = {"label": "m", "backend": "openvino-genai", "precision": "f32", "model_path": "/x", "fingerprint": "f"}


def test_flags_and_sections_are_stored_without_patient_words_unless_opted_in(tmp_path):
    flags = [{"kind": "drug", "text": "阿莫西林", "start": 3, "end": 7}]
    for opt_in in (False, True):
        store = feedback.FeedbackStore(tmp_path / f"fb{opt_in}.sqlite", store_text=opt_in)
        r = store.new_round("discharge_record", "s", {"x": "1"}, "t", 8, record_ref="h1")
        o = store.new_output(r, 0, MODEL)
        store.finish_output(o, "ok", text="阿莫西林", flags=flags, sections={"出院诊断": "complete"})
        store.event("discharge_record", "s", "ui", "h1", "open", r)
        row = store.rows("outputs")[0]
        assert json.loads(row["sections_json"]) == {"出院诊断": "complete"}
        assert json.loads(row["flags_json"]) == ([flags[0]] if opt_in else [{"kind": "drug", "start": 3, "end": 7}])
        assert store.rows("events")[0]["event"] == "open" and store.rows("rounds")[0]["record_ref"] == "h1"
        with pytest.raises(MedwbError, match="event 'close' is unknown"):
            store.event("discharge_record", "s", "ui", "h1", "close")
        store.close()


def test_an_unwritable_database_is_refused_before_any_worker_starts(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a file where the database's folder should be: not writable as root either
    with pytest.raises(MedwbError, match="feedback_db .*folder cannot be created"):
        DischargeApp(OV_MODELS, feedback_db=str(blocker / "fb.sqlite"))
    with pytest.raises(MedwbError, match="record_id 'nope' is not a bundled record"):
        DischargeApp(OV_MODELS, record_id="nope", feedback_db=str(tmp_path / "fb.sqlite"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_record_no_context_holds_fails_in_the_card_and_the_worker_serves_on(tmp_path, demo_model_dir):
    app = DischargeApp(OV_MODELS[:1], max_new_tokens=64, run_dir=str(tmp_path))
    app.start()
    try:
        assert app.wait_ready(300)[0]["state"] == "ready"
        huge = record.record_text(RECORD).replace("出院医嘱：", "出院医嘱：" + "口服琥珀酸亚铁0.1g每日三次。" * 300)
        app.source_editor.value = huge
        app.open_button.click()
        [result] = app.wait(120)
        assert result["status"] == "error" and "does not fit the model's context of 2048 tokens" in result["error"]
        assert "does not fit" in app.cards[0].body.value
        app.record_picker.value = RECORD  # the next record drafts normally in the same worker
        [result] = app.wait(120)
        assert result["status"] == "ok" and app.workers[0].restarts == 0
    finally:
        app.close()


# ------------------------------------------------------------------ usage rates from raw rows

def rates_from_raw_rows(db: Path, workflow_name: str) -> dict:
    """Usage and adoption rates in plain SQL, straight from the definitions (no pandas)."""
    con = sqlite3.connect(db)
    opened = {r for (r,) in con.execute("SELECT DISTINCT record_ref FROM events WHERE event = 'open' AND workflow = ?",
                                        (workflow_name,))}
    used = {r for (r,) in con.execute(
        "SELECT DISTINCT r.record_ref FROM actions a JOIN outputs o USING (output_id) JOIN rounds r"
        " ON r.round_id = o.round_id WHERE a.action = 'backfill' AND r.workflow = ?", (workflow_name,))}
    ok, adopted = con.execute(
        "SELECT COUNT(*), SUM(EXISTS (SELECT 1 FROM actions a WHERE a.output_id = o.output_id AND a.action = 'backfill'))"
        " FROM outputs o JOIN rounds r USING (round_id) WHERE o.status = 'ok' AND r.workflow = ?",
        (workflow_name,)).fetchone()
    con.close()
    return {"usage_rate": round(len(opened & used) / len(opened), 3), "adoption_rate": round(adopted / ok, 3)}


def whole_period(db: Path, workflow_name: str) -> dict:
    """The report's rates over every period at once (sums of its per-period counts)."""
    table = usage.usage_table(usage.load(db), "week")
    rows = table[table.workflow == workflow_name]
    return {"usage_rate": round(rows.records_used.sum() / rows.records_opened.sum(), 3),
            "adoption_rate": round(rows.adopted.sum() / rows.ok.sum(), 3)}


def test_usage_rates_by_hand(tmp_path):
    """Four records opened, two with a back-filled draft; 3 of 8 finished drafts adopted."""
    store = feedback.FeedbackStore(tmp_path / "fb.sqlite")
    for i in range(4):
        store.event("discharge_record", "s", "ui", f"r{i}", "open")
        r = store.new_round("discharge_record", "s", {"x": i}, "t", 8, record_ref=f"r{i}")
        outs = [store.new_output(r, slot, {**MODEL, "label": f"m{slot}"}) for slot in (0, 1)]
        for o in outs:
            store.finish_output(o, "ok", text="x", ttft_ms=100.0 * (i + 1), total_ms=1000.0)
        if i < 2:
            store.action("backfill", r, outs[0])
        if i == 0:
            store.action("backfill", r, outs[1], detail="出院医嘱")
            store.action("like", r, outs[0])
            store.action("report_error", r, outs[1], category=feedback.ERROR_CATEGORIES[1])
    store.close()
    table = usage.usage_table(usage.load(tmp_path / "fb.sqlite"), "day")
    row = table.iloc[0]
    assert (row.opens, row.records_opened, row.records_used, row.ok, row.adopted) == (4, 4, 2, 8, 3)
    assert (row.usage_rate, row.adoption_rate, row.like_rate, row.error_reports) == (0.5, 0.375, 1.0, 1)
    assert row.ttft_p50_ms == 250.0
    by_model = usage.usage_table(usage.load(tmp_path / "fb.sqlite"), "day", by_model=True).set_index("model_label")
    assert by_model.loc["m0", "usage_rate"] == 0.5 and by_model.loc["m1", "usage_rate"] == 0.25
    assert rates_from_raw_rows(tmp_path / "fb.sqlite", "discharge_record") == {"usage_rate": 0.5, "adoption_rate": 0.375}


def test_simulate_refuses_a_real_database_and_bad_days(tmp_path, capsys):
    real = feedback.FeedbackStore(tmp_path / "real.sqlite")
    real.event("discharge_record", "s", "ui", "r", "open")
    real.close()
    assert cli.main(["feedback", "simulate", "--db", str(tmp_path / "real.sqlite"), "--days", "1"]) == 2
    assert "holds real feedback" in capsys.readouterr().err
    with pytest.raises(MedwbError, match="days must be a whole number of days from 1 to 366"):
        simulate.simulate(tmp_path / "sim.sqlite", days=0)
    assert cli.main(["feedback", str(tmp_path / "nope.sqlite"), "--report"]) == 2


# ------------------------------------------------------------------ notebooks 05 and 07

@pytest.mark.slow
def test_notebooks_05_and_07_run_headless_and_the_store_holds_every_event(tmp_path, demo_model_dir, capsys):
    """Open -> drafts stream -> sections and flags -> back-fill whole and one section -> like,
    dislike, copy, report -> save unchanged, edit and save -> regenerate; a long record; bad
    input; one model whose folder does not exist. Then the usage report on this run's store
    and on a simulated week, with the rates recomputed from raw rows."""
    nb = Path(runner.NOTEBOOKS_DIR) / "05_discharge_record.ipynb"
    models = OV_MODELS + [f"bigdl:sym_int4@{tmp_path / 'no-such-model'}"]
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), kernel_name="medwb-main", cwd=str(tmp_path),
                        parameters={"run_dir": str(tmp_path), "models": models, "fit_study_records": 2},
                        progress_bar=False)
    db = tmp_path / "feedback.sqlite"
    con = sqlite3.connect(db)
    outputs = con.execute("SELECT round_id, model_label, status, error, flags_json, sections_json, total_ms "
                          "FROM outputs ORDER BY output_id").fetchall()
    assert [o[2] for o in outputs] == ["ok", "ok", "error"] * 4  # open, edit-and-save, new record, long
    assert "no-such-model" in outputs[2][3] and "does not exist" in outputs[2][3]
    for o in outputs:
        if o[2] == "ok":
            assert json.loads(o[5]).keys() == set(record.SECTIONS) and isinstance(json.loads(o[4]), list)
            assert o[6] > 0
    events = [e for (e,) in con.execute("SELECT event FROM events ORDER BY event_id")]
    assert events == ["open", "save_unchanged", "save", "open", "open"]  # the new record: an open
    actions = con.execute("SELECT action, detail FROM actions ORDER BY action_id").fetchall()
    assert ("backfill", "all") in actions and ("backfill", "出院医嘱") in actions
    assert {a for a, _ in actions} == {"view", "backfill", "like", "dislike", "copy", "report_error", "regenerate"}
    rounds = con.execute("SELECT round_id, parent_round_id, record_ref, origin FROM rounds ORDER BY round_id").fetchall()
    assert rounds[1][1] == rounds[0][0] and rounds[0][2] == RECORD and rounds[2][2].startswith("typed-")
    assert rounds[2][1] is None and rounds[3][2].startswith("typed-") and rounds[3][2] != rounds[2][2]
    assert {r[3] for r in rounds} == {"scripted"}
    assert con.execute("SELECT COUNT(*) FROM outputs WHERE output_text IS NOT NULL").fetchone()[0] == 0
    con.close()
    text = json.dumps(json.loads((tmp_path / nb.name).read_text(encoding="utf-8"))["cells"], ensure_ascii=False)
    assert "病历过长，已精简" in text and "the record is empty" in text and "no admission part" in text
    assert "saved unchanged" in text and "kept_last_day" in text
    assert (tmp_path / "fitting_study.md").exists() and (tmp_path / "feedback_summary_discharge_record.csv").exists()

    nb7 = Path(runner.NOTEBOOKS_DIR) / "07_usage_report.ipynb"
    pm.execute_notebook(str(nb7), str(tmp_path / nb7.name), kernel_name="medwb-main", cwd=str(tmp_path),
                        parameters={"run_dir": str(tmp_path), "simulate_days": 3}, progress_bar=False)
    sim = tmp_path / "simulated-month.sqlite"
    for path, report in ((sim, "usage_report_simulated"), (db, "usage_report")):
        page = (tmp_path / report / "usage_report.html").read_text(encoding="utf-8")
        assert ("SIMULATED DATA" in page) == (path == sim) and "data:image/png;base64," in page
        for wf in ("discharge_record",) + (("differential_diagnosis",) if path == sim else ()):
            assert whole_period(path, wf) == rates_from_raw_rows(path, wf), (path.name, wf)
    con = sqlite3.connect(sim)
    assert {o for (o,) in con.execute("SELECT DISTINCT origin FROM rounds")} == {"simulated"}
    assert con.execute("SELECT value FROM meta WHERE key = 'simulated'").fetchone() == ("1",)
    days = {d[:10] for (d,) in con.execute("SELECT created_at FROM rounds")}
    assert days and days <= {"2026-11-02", "2026-11-03", "2026-11-04"}
    con.close()
    assert cli.main(["feedback", str(db), "--report", "--out", str(tmp_path / "cli-report")]) == 0
    assert "discharge_record" in capsys.readouterr().out and (tmp_path / "cli-report" / "usage_report.html").exists()
    assert usage_report.build(sim)["simulated"] and not usage_report.build(db)["simulated"]
