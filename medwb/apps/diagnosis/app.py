"""The differential-diagnosis app (鉴别诊断) for notebook 04: the case form, the course-record
editor the chosen answer is back-filled into, and flags on 诊断依据 findings the case does not
state. Workers, cards, rounds, doctor actions and the feedback store are the common app core
(``medwb.apps.core``), shared with the discharge-record app.

Every button is a method too (``app.generate()``, ``app.backfill(slot)``, ...), and
``app.scripted_demo(step)`` clicks the same buttons headless, so papermill runs the whole
flow a doctor would.
"""
from __future__ import annotations

from medwb.apps import core
from medwb.apps.diagnosis import record as diagnosis
from medwb.tasks import prompts
from medwb.errors import MedwbError

WORKFLOW = "differential_diagnosis"
# Three variants of the demo model across both routes; threads are shared out among them.
DEFAULT_MODELS = ("openvino-genai:int8/f32", "openvino-genai:int4/f32", "bigdl:sym_int4")


class DiagnosisApp(core.ClinicalApp):
    """The widget app. ``start()`` launches the workers; ``widget`` is what to display."""
    WORKFLOW = WORKFLOW
    PROMPT_KIND = "diagnosis"

    def __init__(self, models=DEFAULT_MODELS, max_new_tokens: int = 200, case_id: str = "",
                 feedback_db: str = "", run_dir: str = "", store_text: bool = False, threads: int = 0,
                 template: str = prompts.DIAGNOSIS_PROMPT, load_timeout_s: float = 900,
                 generate_timeout_s: float = 300, origin: str = "ui", clock=None, pool: str = ""):
        template = diagnosis.check_template(template)
        initial = diagnosis.case_fields(case_id) if case_id else None
        super().__init__(models, max_new_tokens, feedback_db, run_dir, store_text, threads, template,
                         load_timeout_s, generate_timeout_s, origin, clock, pool)
        self.case_ref = case_id or None
        self._inserted: tuple[int, int, str] | None = None
        self._build_widgets()
        if initial:
            self.case_picker.value = case_id

    # ================================================================ widgets
    def _build_widgets(self) -> None:
        import ipywidgets as w
        wide = w.Layout(width="98%")
        self.case_picker = w.Dropdown(options=[("— 手动录入 (type a case) —", "")] + diagnosis.case_choices(),
                                      description="病例", layout=w.Layout(width="60%"))
        self.inputs = {}
        for key, label in diagnosis.FIELDS:
            if key in ("sex", "age"):
                self.inputs[key] = w.Text(description=label, layout=w.Layout(width="12em"))
            elif key == "chief_complaint":
                self.inputs[key] = w.Text(description=label, layout=wide, placeholder="e.g. 胸痛3天")
            else:
                self.inputs[key] = w.Textarea(description=label, layout=w.Layout(width="98%", height="4.5em"))
        self.generate_button = w.Button(description="生成 generate", button_style="success", icon="play")
        self.new_case_button = w.Button(description=self.NEW_WORDS.replace(" · ", " "),
                                        tooltip="another patient: empty the form; the next answers are a new record")
        self.status = w.HTML()
        self.viewer = w.HTML()
        self.record_editor = w.Textarea(description="病程记录", layout=w.Layout(width="98%", height="14em"))
        self.record_view = w.HTML()
        self.copy_area = w.Textarea(description="复制", layout=w.Layout(width="98%", height="4em"))
        self.clipboard = w.Output()
        self.case_picker.observe(lambda change: self._ui(self.load_case, change["new"]), names="value")
        self.generate_button.on_click(lambda _: self._ui(self.generate))
        self.new_case_button.on_click(lambda _: self._ui(self.new_case))
        for box in self.inputs.values():
            box.observe(lambda change: self._form_edited(), names="value")
        self.record_editor.observe(lambda change: self._show_record(), names="value")
        form = w.VBox([self.case_picker, w.HBox([self.inputs["sex"], self.inputs["age"]]),
                       *[self.inputs[k] for k, _ in diagnosis.FIELDS[2:]],
                       w.HBox([self.generate_button, self.new_case_button]), self.status])
        self.widget = w.VBox([
            w.HTML("<h3>鉴别诊断 · differential diagnosis</h3>"), form,
            w.HBox([c.widget for c in self.cards], layout=w.Layout(flex_flow="row wrap")),
            w.HTML("<b>查看 · viewer</b> (highlighted: not in the case, please check)"), self.viewer,
            w.HTML("<b>病程记录 · record editor</b> (the back-filled answer is highlighted below)"),
            self.record_editor, self.record_view, self.copy_area, self.clipboard])

    # ================================================================ the form
    def load_case(self, case_id: str) -> None:
        """Open a bundled case: fill the form (and a fresh course record); '' empties it for
        a case typed in by hand. Opening is stored (the usage rate counts opened records)."""
        fields = diagnosis.case_fields(case_id, "case") if case_id else {k: "" for k, _ in diagnosis.FIELDS}
        with self._lock:  # another patient: no round to regenerate
            self._stop_running()
            self.round_id = None
        for key, value in fields.items():
            self.inputs[key].value = value
        self.case_ref = case_id or None
        self.record_ref = case_id or None
        self.record_editor.value = diagnosis.course_record(fields) if case_id else ""
        self._inserted = None
        if case_id:
            self.record_event("open")

    def fields(self) -> dict:
        return {key: widget.value for key, widget in self.inputs.items()}

    def _clear_form(self) -> None:
        if self.case_picker.value:
            self.case_picker.value = ""  # its observer empties the form (load_case(""))
        for box in self.inputs.values():
            box.value = ""
        self.record_editor.value = ""
        self._inserted = None

    def _form_edited(self) -> None:
        """A form the doctor empties by hand after a record is open is another patient:
        what is typed next is a new record, not a regeneration of the last one."""
        if self.record_ref is not None and not any(str(v).strip() for v in self.fields().values()):
            self._moved_on()
            self.record_editor.value, self._inserted = "", None

    # ================================================================ generating
    def generate(self) -> int:
        """A new round for the form's current inputs: every model at once. Pressing it again
        after editing the inputs is a regeneration: a new round linked to the previous one,
        whose unfinished answers are stopped."""
        fields = diagnosis.check_inputs(self.fields())
        if self.case_ref and fields != diagnosis.check_inputs(diagnosis.case_fields(self.case_ref)):
            self.case_ref = None  # edited: no longer the bundled case as shipped
        if self.record_ref is None:  # typed by hand: generating opens it as a record
            self.record_ref = self.new_typed_ref()
            self.record_event("open")
        if not self.record_editor.value.strip():
            self.record_editor.value = diagnosis.course_record(fields)
        return self.start_round(fields)

    def analyse(self, text: str, fields: dict) -> dict:
        """Flags on 诊断依据: every value, date and drug it states that the case does not."""
        return {"flags": diagnosis.basis_flags(text, fields)}

    # ================================================================ doctor actions
    def backfill(self, slot: int) -> tuple[int, int]:
        """Pick this answer: insert it into the record editor (一键回填), highlighted."""
        card = self._card(slot, "back-fill")
        record, span = diagnosis.backfill(self.record_editor.value, card.text, self._inserted)
        self.store.action("backfill", card.round_id, card.output_id)
        self._inserted = (span[0], span[1], record[span[0]:span[1]])
        self.record_editor.value = record  # its observer redraws the highlighted view
        self.say(f"已回填 {card.name} 的结果 (characters {span[0]}–{span[1]} of the record)")
        return span

    def _show_record(self) -> None:
        ins = self._inserted
        valid = ins and self.record_editor.value[ins[0]:ins[1]] == ins[2]
        self.record_view.value = diagnosis.highlight(self.record_editor.value, ins[:2] if valid else None)

    # ================================================================ scripted demo
    SCRIPTED_STEPS = ("generate", "doctor_actions", "new_case", "long_record", "missing_field")
    # A case typed in by hand, as a doctor writes one (the new_case step).
    TYPED_CASE = {"sex": "男", "age": "58", "chief_complaint": "反复胸闷气短2年，加重伴双下肢水肿1周",
                  "present_history": "2年前活动后出现胸闷、气短，休息后缓解；1周前受凉后加重，夜间不能平卧，双下肢水肿。",
                  "past_history": "高血压10年，规律服药。", "physical_exam": "BP 150/90mmHg，双肺底湿啰音，双下肢凹陷性水肿。",
                  "auxiliary_exams": "心脏超声：左室射血分数38%。"}

    def scripted_demo(self, step: str, case_id: str = "") -> list[dict] | str:
        """Drive the app through its widgets as a doctor would, for headless runs (notebook 04
        under papermill, workshops without a browser): every click goes through the same
        handlers and is stored like a real one (rounds are marked origin='scripted').

        generate: pick ``case_id`` (else the first bundled case) and press 生成; the answers.
        doctor_actions: view every answer, back-fill the first, like it, dislike the second,
        copy the last and report an error on it; the status line.
        new_case: press 新病例 (the next patient), type a case by hand and press 生成: a new
        record with its own round, not a regeneration of the last; the answers.
        long_record: append a very long 辅助检查 and generate again (the prompt is cut to fit
        the context, saying so); the answers.
        missing_field: empty 主诉 and press 生成 (refused, saying which field); the status line.
        """
        if step not in self.SCRIPTED_STEPS:
            raise MedwbError(f"step {step!r}: use one of {', '.join(self.SCRIPTED_STEPS)}")
        if step == "generate":
            self.case_picker.value = case_id or self.case_picker.options[1][1]
            self.generate_button.click()
            return self.wait()
        if step == "new_case":
            self.new_case_button.click()
            for key, value in self.TYPED_CASE.items():
                self.inputs[key].value = value
            self.generate_button.click()
            return self.wait()
        if step == "long_record":
            self.inputs["auxiliary_exams"].value += "血常规：白细胞12.1×10^9/L，中性粒细胞百分比85%。" * 120
            self.generate_button.click()
            return self.wait()
        if step == "missing_field":
            self.inputs["chief_complaint"].value = ""
            self.generate_button.click()
            return self.status_text
        return self.demo_review("no answer finished: run the 'generate' step first (and check the cards' errors)",
                                error_option=1, error_detail="鉴别诊断遗漏了重要疾病")
