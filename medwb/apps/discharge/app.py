"""The discharge-record app (出院记录) for notebook 05.

As in the source case study, generation starts when the doctor **opens** a patient's record
(the record picker, or 打开 for a pasted one) or **saves** it changed (保存; a save with no
change is stored but generates nothing). Each model's draft streams into its card, is
parsed into the five sections (出院诊断, 入院情况, 诊疗经过, 出院情况, 出院医嘱) with the status
of each, and every value, date, drug and discharge diagnosis the record does not state is
highlighted for the doctor to check. 一键回填 copies the whole draft (or one section) into
the five-field discharge-record editor. Workers, cards, rounds, doctor actions and the
feedback store are the common app core (``medwb.apps.core``), shared with the diagnosis app.
"""
from __future__ import annotations

import html

from medwb.apps import core
from medwb.apps.discharge import record
from medwb.errors import MedwbError
from medwb.tasks import prompts

WORKFLOW = "discharge_record"
DEFAULT_MODELS = ("openvino-genai:int8/f32", "openvino-genai:int4/f32", "bigdl:sym_int4")
STATUS_MARKS = {"complete": ("✓", "#2e7d32", "完整 complete"), "empty": ("○", "#b36b00", "空 empty"),
                "missing": ("✗", "#c00000", "缺失 missing")}


class DischargeCard(core.ModelCard):
    """A model's draft with its sections' status, and per-section back-fill."""

    def extra_rows(self) -> list:
        import ipywidgets as w
        self.section_picker = w.Dropdown(options=record.SECTIONS, layout=w.Layout(width="9em"))
        self.section_button = w.Button(description="回填本节", tooltip="back-fill this section only")
        self.section_button.on_click(lambda _: self.app._ui(self.app.backfill, self.slot, self.section_picker.value))
        self.buttons.append(self.section_button)
        return [w.HBox([self.section_picker, self.section_button])]

    def checks_html(self) -> str:
        sections = self.analysis.get("sections")
        if not sections:
            return super().checks_html()
        line = " ".join(f"<span style='color:{STATUS_MARKS[v][1]}' title='{STATUS_MARKS[v][2]}'>"
                        f"{STATUS_MARKS[v][0]} {html.escape(k)}</span>" for k, v in sections.items())
        return f"<small>{line}</small><br>" + super().checks_html()


class DischargeApp(core.ClinicalApp):
    """The widget app. ``start()`` launches the workers; ``widget`` is what to display."""
    WORKFLOW = WORKFLOW
    PROMPT_KIND = "discharge"
    CARD = DischargeCard
    NEW_WORDS = "新病历 · new record"

    def __init__(self, models=DEFAULT_MODELS, max_new_tokens: int = 400, record_id: str = "",
                 feedback_db: str = "", run_dir: str = "", store_text: bool = False, threads: int = 0,
                 template: str = prompts.DISCHARGE_PROMPT, load_timeout_s: float = 900,
                 generate_timeout_s: float = 300, origin: str = "ui", clock=None, pool: str = ""):
        if record_id:
            record.record_text(record_id)  # an unknown id is refused before anything starts
        super().__init__(models, max_new_tokens, feedback_db, run_dir, store_text, threads, template,
                         load_timeout_s, generate_timeout_s, origin, clock, pool)
        self.initial_record = record_id
        self._saved_text: str | None = None   # the record as last opened or saved
        self._fields: dict | None = None
        self.filled_from: dict[str, str] = {}  # section -> the model it was back-filled from
        self._build_widgets()

    # ================================================================ widgets
    def _build_widgets(self) -> None:
        import ipywidgets as w
        self.record_picker = w.Dropdown(options=[("— 粘贴病历 (paste a record, then 打开) —", "")]
                                        + record.record_choices(), description="病历", layout=w.Layout(width="70%"))
        self.source_editor = w.Textarea(description="住院病历", layout=w.Layout(width="98%", height="16em"),
                                        placeholder="一般情况：患者，男，60岁。\n主诉：…\n…\n入院诊断：…\n病程记录：\n第1日，…\n"
                                                    "出院前查房：…\n出院医嘱：…")
        self.open_button = w.Button(description="打开 open", icon="folder-open",
                                    tooltip="open the pasted record: drafts start at once")
        self.save_button = w.Button(description="保存 save", button_style="success", icon="save",
                                    tooltip="save the record; if it changed, the drafts are regenerated")
        self.new_button = w.Button(description=self.NEW_WORDS.replace(" · ", " "),
                                   tooltip="another patient: empty the record and the editor")
        self.status = w.HTML()
        self.viewer = w.HTML()
        self.editor = {s: w.Textarea(description=s, layout=w.Layout(width="98%", height="4.5em"))
                       for s in record.SECTIONS}
        self.editor_note = w.HTML()
        self.copy_area = w.Textarea(description="复制", layout=w.Layout(width="98%", height="4em"))
        self.clipboard = w.Output()
        self.record_picker.observe(lambda change: change["new"] and self._ui(self.open_record, change["new"]),
                                   names="value")
        self.open_button.on_click(lambda _: self._ui(self.open_typed))
        self.save_button.on_click(lambda _: self._ui(self.save))
        self.new_button.on_click(lambda _: self._ui(self.new_case))
        self.source_editor.observe(lambda change: self._record_edited(change["new"]), names="value")
        self.widget = w.VBox([
            w.HTML("<h3>出院记录 · discharge record</h3>"), self.record_picker, self.source_editor,
            w.HBox([self.open_button, self.save_button, self.new_button]), self.status,
            w.HBox([c.widget for c in self.cards], layout=w.Layout(flex_flow="row wrap")),
            w.HTML("<b>查看 · viewer</b> (highlighted: not in the record, please check)"), self.viewer,
            w.HTML("<b>出院记录 · discharge-record editor</b> (一键回填 fills all five sections, 回填本节 one)"),
            *self.editor.values(), self.editor_note, self.copy_area, self.clipboard])

    # ================================================================ opening and saving
    def open_record(self, record_id: str) -> int:
        """Open a bundled record (the picker): it fills the editor and drafts start at once."""
        text = record.record_text(record_id, "record")
        self.record_ref = self.case_ref = record_id
        self.source_editor.value = text
        return self._open(text)

    def open_typed(self) -> int:
        """Open the record pasted or typed into the editor as a new record."""
        text = self.source_editor.value
        record.check_record(text)  # refused before it counts as opened
        self.record_ref, self.case_ref = self.new_typed_ref(), None
        return self._open(text)

    def _open(self, text: str) -> int:
        fields = record.check_record(text)
        with self._lock:  # another record: not a regeneration of the previous one
            self._stop_running()
            self.round_id = None
        for box in self.editor.values():
            box.value = ""
        self.filled_from, self.editor_note.value = {}, ""
        round_id = self._generate(fields, text)
        self.record_event("open", round_id)
        return round_id

    def save(self) -> int | None:
        """Save the record. Changed: stored, and the drafts regenerate (a new round linked to
        the previous one, whose unfinished drafts stop). Unchanged: stored, nothing runs."""
        text = self.source_editor.value
        if self.record_ref is None:  # nothing open yet: saving a pasted record opens it
            return self.open_typed()
        if text == self._saved_text:
            self.record_event("save_unchanged", self.round_id)
            self.say("病历未修改，不重新生成 (saved unchanged: the drafts stay)")
            return None
        fields = record.check_record(text)
        if self.case_ref and text != record.record_text(self.case_ref):
            self.case_ref = None  # edited: no longer the bundled record as shipped
        round_id = self._generate(fields, text)
        self.record_event("save", round_id)
        return round_id

    def _clear_form(self) -> None:
        self.record_picker.value = ""
        self.source_editor.value = ""
        for box in self.editor.values():
            box.value = ""
        self._saved_text, self._fields = None, None
        self.filled_from, self.editor_note.value = {}, ""

    def _record_edited(self, text: str) -> None:
        """A record the doctor empties by hand after one is open is another patient: what is
        pasted next and saved (or opened) is a new record, not a regeneration of the last."""
        if self.record_ref is not None and not text.strip():
            self._moved_on()
            self._saved_text = None

    def _generate(self, fields: dict, text: str) -> int:
        self._saved_text, self._fields = text, fields
        return self.start_round(fields)

    def analyse(self, text: str, fields: dict) -> dict:
        return record.analyse(text, fields)

    # ================================================================ doctor actions
    def backfill(self, slot: int, section: str | None = None) -> list[str]:
        """一键回填: the draft's sections into the discharge-record editor (all of them, or the
        one named). A section the draft lacks is left as it is, and said."""
        card = self._card(slot, "back-fill")
        values = {s: box.value for s, box in self.editor.items()}
        written = record.backfill(values, card.analysis.get("parsed") or {}, section)
        self.store.action("backfill", card.round_id, card.output_id, detail=section or "all")
        for s in written:
            self.editor[s].value = values[s]
            self.filled_from[s] = card.worker.label
        lacking = [s for s in ([section] if section else record.SECTIONS) if s not in written]
        self.editor_note.value = "<small>" + " · ".join(
            f"{html.escape(s)} ← {html.escape(m)}" for s, m in self.filled_from.items()) + "</small>"
        self.say(f"已回填 {card.name}: {', '.join(written)}"
                 + (f" (the draft has no {', '.join(lacking)}: left as it was)" if lacking else ""))
        return written

    def checks(self):
        """Per model: each section's status, and the flags (kind: words as in the draft)."""
        import pandas as pd
        rows = []
        for c in self.cards:
            a = c.analysis
            rows.append({"model": c.worker.label, "status": c.status, **(a.get("sections") or {}),
                         "flags": "; ".join(f"{core.FLAG_NAMES.get(f['kind'], f['kind'])}: {f['text']}"
                                            for f in a.get("flags") or [])})
        return pd.DataFrame(rows).set_index("model")

    def discharge_record(self) -> dict:
        """The discharge-record editor's five sections, as the doctor has them now."""
        return {s: box.value for s, box in self.editor.items()}

    # ================================================================ scripted demo
    SCRIPTED_STEPS = ("open", "doctor_actions", "save_unchanged", "edit_and_save", "new_record", "long_record",
                      "bad_input")

    def scripted_demo(self, step: str, record_id: str = ""):
        """Drive the app through its widgets as a doctor would, for headless runs (notebook 05
        under papermill, workshops without a browser); every click is stored like a real one.

        open: pick ``record_id`` (else the first bundled record); the drafts.
        doctor_actions: view every draft; back-fill the first whole, then 出院医嘱 alone from
        the second; like the first, dislike the second, copy the last and report an error on
        it; the status line.
        save_unchanged: press 保存 without a change (stored, nothing generated); the status line.
        edit_and_save: add a course note and press 保存: the drafts regenerate; the drafts.
        new_record: press 新病历 (the next patient), paste another bundled record as text and
        press 保存: a new record with its own round, not a regeneration; the drafts.
        long_record: paste a record with three months of daily notes and open it (each model
        keeps the days that matter and says what it left out); the drafts.
        bad_input: open an empty record, then one with no admission part; the status line.
        """
        if step not in self.SCRIPTED_STEPS:
            raise MedwbError(f"step {step!r}: use one of {', '.join(self.SCRIPTED_STEPS)}")
        if step == "open":
            self.record_picker.value = record_id or self.initial_record or self.record_picker.options[1][1]
            return self.wait()
        if step == "save_unchanged":
            self.save_button.click()
            return self.status_text
        if step == "edit_and_save":
            self.source_editor.value = self.source_editor.value.replace(
                "\n出院前查房：", "\n第99日，复查血常规：白细胞6.5×10^9/L，血红蛋白128g/L。\n出院前查房：")
            self.save_button.click()
            return self.wait()
        if step == "new_record":
            was = self.record_ref
            self.new_button.click()
            other = next(v for _, v in self.record_picker.options[1:] if v != was)
            self.source_editor.value = record.record_text(other)
            self.save_button.click()
            return self.wait()
        if step == "long_record":
            self.record_picker.value = ""
            self.source_editor.value = long_record(record_id or self.initial_record or self.record_picker.options[1][1])
            self.open_button.click()
            return self.wait()
        if step == "bad_input":
            self.record_picker.value = ""
            self.source_editor.value = ""
            self.open_button.click()
            self.source_editor.value = "病程记录：\n第1日，查房：病情平稳，继续目前治疗。\n出院医嘱：注意休息。"
            self.open_button.click()
            return self.status_text
        def backfill_one_section(card) -> None:
            card.section_picker.value = "出院医嘱"
            card.section_button.click()
        return self.demo_review("no draft finished: run the 'open' step first (and check the cards' errors)",
                                error_option=0, error_detail="出院医嘱药物剂量与病历不符",
                                on_second=backfill_one_section)


def long_record(record_id: str, days: int = 180) -> str:
    """A bundled record stretched to ``days`` of course notes: the real notes, with a routine
    ward-round note on every day in between (what a long stay's record looks like)."""
    from medwb.tasks.corpus import WARD_FILLERS
    fields = record.parse_record(record.record_text(record_id))
    notes = [record._NOTE.sub("", n, count=1) for n in record.split_notes(fields["course_notes"])]
    every = max(1, days // max(1, len(notes)))
    course = []
    for day in range(1, days + 1):
        i, routine = divmod(day - 1, every)
        text = notes[i] if routine == 0 and i < len(notes) else WARD_FILLERS[day % len(WARD_FILLERS)]
        course.append(f"第{day}日，{text}")
    return record.render_record({**fields, "course_notes": "".join(course)})
