"""#37 the apps as doctors meet them: one patient after another is one record each (新病例 /
新病历, or a form emptied by hand), a regeneration only when the open record is generated
again; the usage report's counts and rates checked against a scripted day whose true counts
are known; the status line follows the cards; button labels are words, not emoji."""
import re

import pytest

from medwb.apps.diagnosis.app import DiagnosisApp
from medwb.apps.discharge import record
from medwb.apps.discharge.app import DischargeApp
from medwb.quality import usage

# One quick model (the demo model's PyTorch FP32): the day's counts do not depend on it.
MODELS = ["pytorch:fp32"]
TYPED = [{"sex": "女", "age": "34", "chief_complaint": "发热伴咽痛3天", "present_history": "3天前受凉后发热，最高38.9℃。",
          "past_history": "体健。", "physical_exam": "咽部充血，扁桃体Ⅱ度肿大。", "auxiliary_exams": "血常规：白细胞13.2×10^9/L。"},
         {"sex": "男", "age": "71", "chief_complaint": "突发言语不清4小时", "present_history": "4小时前突发言语不清，右侧肢体无力。",
          "past_history": "房颤5年。", "physical_exam": "右侧肢体肌力3级。", "auxiliary_exams": "头颅CT：未见出血。"}]
EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF]")


def day_row(db, workflow):
    table = usage.usage_table(usage.load(db), "day")
    rows = table[table.workflow == workflow]
    assert len(rows) == 1, rows  # one day
    return rows.iloc[0].to_dict()


def buttons(widget):
    import ipywidgets as w
    out = [widget] if isinstance(widget, w.Button) else []
    for child in getattr(widget, "children", ()):
        out += buttons(child)
    return out


@pytest.fixture
def diagnosis_app(tmp_path):
    app = DiagnosisApp(MODELS, max_new_tokens=8, feedback_db=str(tmp_path / "fb.sqlite"))
    app.start()
    assert app.wait_ready()[0]["state"] == "ready"
    yield app
    app.close()


def test_a_diagnosis_day_counts_each_patient_once(diagnosis_app, tmp_path):
    app = diagnosis_app
    cases = [v for _, v in app.case_picker.options[1:]]

    def generate():
        app.generate_button.click()
        app.wait()
        assert app.cards[0].status == "ok", app.cards[0].error
    # Patient 1: a bundled case; back-filled and liked; an added finding, generated again.
    app.case_picker.value = cases[0]
    generate()
    app.cards[0].backfill_button.click()
    app.cards[0].like_button.click()
    app.inputs["present_history"].value += "伴恶心。"
    generate()
    # Patient 2: 新病例, typed by hand.
    app.new_case_button.click()
    assert not any(app.fields().values()) and "新病例" in app.status_text
    for key, value in TYPED[0].items():
        app.inputs[key].value = value
    generate()
    # Patient 3: the doctor empties the form by hand and types the next case; back-filled.
    for box in app.inputs.values():
        box.value = ""
    for key, value in TYPED[1].items():
        app.inputs[key].value = value
    generate()
    app.cards[0].backfill_button.click()
    # Patient 4: another bundled case, generated twice as it is (a regeneration); the second
    # answer back-filled and disliked.
    app.case_picker.value = cases[1]
    generate()
    generate()
    app.cards[0].backfill_button.click()
    app.cards[0].dislike_button.click()
    # Patient 5: 新病例 again, the first typed case once more (a new record all the same).
    app.new_case_button.click()
    for key, value in TYPED[0].items():
        app.inputs[key].value = value
    generate()

    # The status line follows the cards: done, not "generating".
    assert "1 完成 done" in app.status_text and "生成中" not in app.status_text
    row = day_row(tmp_path / "fb.sqlite", "differential_diagnosis")
    truth = {"opens": 5, "records_opened": 5, "records_used": 3, "generations": 7, "regenerations": 2, "ok": 7,
             "adopted": 3, "likes": 1, "dislikes": 1}
    assert {k: row[k] for k in truth} == truth
    assert (row["usage_rate"], row["adoption_rate"], row["regeneration_rate"], row["like_rate"]) == \
        (0.6, round(3 / 7, 3), round(2 / 7, 3), 0.5)


def test_a_discharge_day_counts_each_patient_once(tmp_path):
    app = DischargeApp(MODELS, max_new_tokens=8, feedback_db=str(tmp_path / "fb.sqlite"))
    app.start()
    try:
        assert app.wait_ready()[0]["state"] == "ready"
        ids = [v for _, v in app.record_picker.options[1:]]
        # Patient 1: a bundled record; back-filled; a note added and saved (a regeneration).
        app.record_picker.value = ids[0]
        app.wait()
        app.cards[0].backfill_button.click()
        app.source_editor.value = app.source_editor.value.replace("\n出院医嘱：", "\n第9日，复查血常规正常。\n出院医嘱：")
        app.save_button.click()
        app.wait()
        # Patient 2: 新病历, the next record pasted and saved: a new record, not a regeneration.
        app.new_button.click()
        assert app.source_editor.value == "" and "新病历" in app.status_text
        app.source_editor.value = record.record_text(ids[1])
        app.save_button.click()
        app.wait()
        app.cards[0].backfill_button.click()
        # Patient 3: the doctor empties the record by hand and pastes another; saved twice,
        # the second time unchanged (stored, nothing generated).
        app.source_editor.value = ""
        app.source_editor.value = record.record_text(ids[2])
        app.save_button.click()
        app.wait()
        app.save_button.click()
        assert "完成 done" in app.status_text.splitlines()[0]
    finally:
        app.close()
    row = day_row(tmp_path / "fb.sqlite", "discharge_record")
    truth = {"opens": 3, "records_opened": 3, "records_used": 2, "generations": 4, "regenerations": 1, "ok": 4,
             "adopted": 2}
    assert {k: row[k] for k in truth} == truth
    assert (row["usage_rate"], row["regeneration_rate"]) == (round(2 / 3, 3), 0.25)


def test_the_status_line_counts_failed_answers_beside_finished_ones(tmp_path):
    app = DiagnosisApp(MODELS + [f"pytorch:fp32@{tmp_path / 'no-such-model'}"], max_new_tokens=8,
                       case_id="h010001", feedback_db=str(tmp_path / "fb.sqlite"))
    app.start()
    try:
        app.wait_ready()
        app.generate_button.click()
        app.wait()
        line = app.status_text.splitlines()[0]
        assert "1 完成 done" in line and "1 失败 failed" in line and "生成中" not in line, line
    finally:
        app.close()


@pytest.mark.parametrize("App", [DiagnosisApp, DischargeApp])
def test_every_button_is_labelled_in_words(App, tmp_path):
    """Emoji-only buttons show as empty boxes where no emoji font is installed (hospital
    desktops, thin clients): every label has words, and no emoji."""
    app = App(MODELS, feedback_db=str(tmp_path / "fb.sqlite"))  # not started: widgets only
    labels = [b.description for b in buttons(app.widget)]
    assert len(labels) >= 8 and all(re.search(r"[\u4e00-\u9fffA-Za-z]", x) for x in labels), labels
    assert not [x for x in labels if EMOJI.search(x)], labels
    assert "赞" in labels and "踩" in labels
