"""The differential-diagnosis app (鉴别诊断): an ipywidgets form, one card per model, the
record editor, and the feedback store, for notebook 04.

Every button is a method too (``app.generate()``, ``app.backfill(slot)``, ...), and
``app.scripted_demo(step)`` clicks the same buttons headless, so papermill runs the whole
flow a doctor would. The models run in long-lived worker processes (``medwb.apps.workers``)
that generate in parallel and stream into their cards; every generation and every action
goes to SQLite (``medwb.apps.feedback``) as it happens.
"""
from __future__ import annotations

import html
import json
import threading
import time
import uuid
from pathlib import Path

from medwb import sysinfo
from medwb.apps.diagnosis import record as diagnosis
from medwb.apps import feedback, workers
from medwb.tasks import prompts
from medwb.errors import MedwbError

WORKFLOW = "differential_diagnosis"
# Three variants of the demo model across both routes; threads are shared out among them.
DEFAULT_MODELS = ("openvino-genai:int8/f32", "openvino-genai:int4/f32", "bigdl:sym_int4")
STREAM_REFRESH_S = 0.1  # at most ~10 card updates a second per model while streaming


def _pre(text: str, colour: str = "") -> str:
    style = "white-space:pre-wrap;margin:0;font-family:inherit" + (f";color:{colour}" if colour else "")
    return f"<pre style='{style}'>{html.escape(text)}</pre>"


class ModelCard:
    """One model's answer for the current round, and the doctor's buttons for it."""

    def __init__(self, app: "DiagnosisApp", slot: int, worker: workers.ModelWorker):
        import ipywidgets as w
        self.app, self.slot, self.worker = app, slot, worker
        self.round_id = self.output_id = None
        self.text, self.status, self.error, self.warning, self.timing = "", "idle", None, None, {}
        self.n_chunks = 0  # text pieces streamed into the card this round
        self._last_refresh = 0.0
        self.header = w.HTML()
        self.body = w.HTML(layout=w.Layout(min_height="12em", max_height="24em", overflow="auto",
                                           border="1px solid #ddd", padding="4px"))
        self.view_button = w.Button(description="查看", tooltip="view this answer in full")
        self.backfill_button = w.Button(description="一键回填", button_style="primary",
                                        tooltip="pick this answer and insert it into the record")
        self.copy_button = w.Button(description="复制", tooltip="copy this answer")
        self.like_button = w.Button(description="👍", layout=w.Layout(width="3.5em"), tooltip="like")
        self.dislike_button = w.Button(description="👎", layout=w.Layout(width="3.5em"), tooltip="dislike")
        self.error_category = w.Dropdown(options=feedback.ERROR_CATEGORIES, layout=w.Layout(width="11em"))
        self.error_detail = w.Text(placeholder="错误说明 (what is wrong)", layout=w.Layout(width="14em"))
        self.report_button = w.Button(description="报错", button_style="warning", tooltip="report an error")
        self.view_button.on_click(lambda _: app._ui(self.app.view, slot))
        self.backfill_button.on_click(lambda _: app._ui(self.app.backfill, slot))
        self.copy_button.on_click(lambda _: app._ui(self.app.copy, slot))
        self.like_button.on_click(lambda _: app._ui(self.app.vote, slot, True))
        self.dislike_button.on_click(lambda _: app._ui(self.app.vote, slot, False))
        self.report_button.on_click(lambda _: app._ui(self.app.report_error, slot, self.error_category.value,
                                                       self.error_detail.value))
        self.widget = w.VBox([self.header, self.body,
                              w.HBox([self.view_button, self.backfill_button, self.copy_button,
                                      self.like_button, self.dislike_button]),
                              w.HBox([self.error_category, self.error_detail, self.report_button])],
                             layout=w.Layout(width="33%", min_width="18em", padding="4px"))
        self.refresh()

    # ---------------------------------------------------------------- state
    def begin(self, round_id: int, output_id: int) -> None:
        self.round_id, self.output_id = round_id, output_id
        self.text, self.status, self.error, self.warning, self.timing = "", "running", None, None, {}
        self.n_chunks = 0
        self.refresh()

    def on_event(self, output_id: int, kind: str, msg: dict) -> None:
        """Worker events of this card's current output (events of an older round only reach
        the database, not the card)."""
        if output_id != self.output_id:
            return
        if kind == "start":
            self.warning = msg.get("truncation") or self.warning
        elif kind == "text":
            self.text += msg["text"]
            self.n_chunks += 1
            if time.monotonic() - self._last_refresh < STREAM_REFRESH_S:
                return
        elif kind == "done":
            self.status, self.error = msg["status"], msg.get("error")
            self.text = msg.get("text") or self.text
            self.timing = {k: msg.get(k) for k in ("ttft_ms", "total_ms", "new_tokens", "prompt_tokens")}
        self.refresh()

    def refresh(self) -> None:
        self._last_refresh = time.monotonic()
        w = self.worker
        state = {"ready": "就绪 ready", "starting": f"启动中 starting ({getattr(w, 'detail', '')})",
                 "failed": "失败 failed", "new": "未启动 not started", "stopped": "已停止 stopped"}[w.state]
        t = self.timing
        timing = ""
        if t.get("total_ms") is not None:
            timing = f"首字 {t['ttft_ms']:.0f} ms · 共 {t['total_ms'] / 1e3:.2f} s · {t['new_tokens']} tokens"
        elif self.status == "running":
            timing = "生成中 generating…"
        self.header.value = (f"<b>{html.escape(w.label)}</b> <small>· {html.escape(state)} · "
                             f"{w.threads} thread(s)</small><br><small>{html.escape(timing)}</small>")
        parts = []
        if self.warning:
            parts.append(_pre("⚠ " + self.warning, "#b36b00"))
        if self.error and self.status != "ok":
            parts.append(_pre(f"✖ {self.status}: {self.error}", "#c00000"))
        elif w.state == "failed" and self.status == "idle":
            parts.append(_pre(f"✖ {w.error}", "#c00000"))
        parts.append(_pre(self.text))
        self.body.value = "".join(parts)
        usable = self.status == "ok"
        for b in (self.view_button, self.backfill_button, self.copy_button, self.like_button, self.dislike_button,
                  self.report_button):
            b.disabled = not usable


class DiagnosisApp:
    """The widget app. ``start()`` launches the workers; ``widget`` is what to display."""

    def __init__(self, models=DEFAULT_MODELS, max_new_tokens: int = 200, case_id: str = "",
                 feedback_db: str = "", run_dir: str = "", store_text: bool = False, threads: int = 0,
                 template: str = prompts.DIAGNOSIS_PROMPT, load_timeout_s: float = 900,
                 generate_timeout_s: float = 300, origin: str = "ui"):
        if isinstance(models, str) or not models:
            raise MedwbError("models must be a non-empty list, e.g. ['openvino-genai:int8/f32', 'bigdl:sym_int4']")
        specs = [workers.parse_model(m, i) for i, m in enumerate(models)]
        labels = [s["label"] for s in specs]
        if len(set(labels)) != len(labels):
            raise MedwbError(f"models: {labels} lists a model twice; give each a different path or a 'label'")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise MedwbError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        for name, value in (("load_timeout_s", load_timeout_s), ("generate_timeout_s", generate_timeout_s)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise MedwbError(f"{name} must be a positive number of seconds, got {value!r}")
        if origin not in ("ui", "scripted"):
            raise MedwbError(f"origin {origin!r}: use 'ui' (doctors at the widgets) or 'scripted' (a notebook "
                             "driving the app); scripted feedback can be left out of reports")
        self.template, self.origin = diagnosis.check_template(template), origin
        initial = diagnosis.case_fields(case_id) if case_id else None
        self.run_dir = Path(run_dir) if run_dir else None
        db = feedback_db or (self.run_dir / "feedback.sqlite" if self.run_dir else Path("feedback.sqlite"))
        self.store = feedback.FeedbackStore(db, store_text=store_text)
        self.max_new_tokens, self.session_id = max_new_tokens, uuid.uuid4().hex
        n_threads = workers.split_threads(len(specs), threads)
        log_dir = (self.run_dir or self.store.path.parent) / "workers"
        self.workers = [workers.ModelWorker(s, n_threads, log_dir, load_timeout_s, generate_timeout_s) for s in specs]
        self.round_id: int | None = None
        self.case_ref: str | None = case_id or None
        self.messages: list[tuple[str, str]] = []
        self._jobs: dict[int, workers.Job] = {}     # output_id -> job, every round
        self._inserted: tuple[int, int, str] | None = None
        self._lock = threading.RLock()
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
        self.status = w.HTML()
        self.cards = [ModelCard(self, i, wk) for i, wk in enumerate(self.workers)]
        self.viewer = w.HTML()
        self.record_editor = w.Textarea(description="病程记录", layout=w.Layout(width="98%", height="14em"))
        self.record_view = w.HTML()
        self.copy_area = w.Textarea(description="复制", layout=w.Layout(width="98%", height="4em"))
        self.clipboard = w.Output()
        self.case_picker.observe(lambda change: self._ui(self.load_case, change["new"]), names="value")
        self.generate_button.on_click(lambda _: self._ui(self.generate))
        self.record_editor.observe(lambda change: self._show_record(), names="value")
        form = w.VBox([self.case_picker, w.HBox([self.inputs["sex"], self.inputs["age"]]),
                       *[self.inputs[k] for k, _ in diagnosis.FIELDS[2:]], self.generate_button, self.status])
        self.widget = w.VBox([
            w.HTML("<h3>鉴别诊断 · differential diagnosis</h3>"), form,
            w.HBox([c.widget for c in self.cards], layout=w.Layout(flex_flow="row wrap")),
            w.HTML("<b>查看 · viewer</b>"), self.viewer,
            w.HTML("<b>病程记录 · record editor</b> (the back-filled answer is highlighted below)"),
            self.record_editor, self.record_view, self.copy_area, self.clipboard])

    def _ui(self, method, *args) -> None:
        """Button handlers: a MedwbError becomes a message under the form, not a traceback."""
        try:
            method(*args)
        except MedwbError as e:
            self.say(str(e), "error")

    def say(self, text: str, level: str = "info", new_round: bool = False) -> None:
        """A message under the form. A round's messages (its truncation warnings, the doctor's
        actions) stay together until the next round starts."""
        with self._lock:
            if new_round:
                self.messages = []
            self.messages.append((level, text))
            marks = {"error": ("✖ ", "#c00000"), "warning": ("⚠ ", "#b36b00")}
            self.status.value = "".join(_pre(marks.get(lv, ("", ""))[0] + t, marks.get(lv, ("", ""))[1])
                                        for lv, t in self.messages)

    @property
    def status_text(self) -> str:
        """The messages under the form, as text (what headless runs print)."""
        return "\n".join(t for _, t in self.messages)

    # ================================================================ workers
    def start(self) -> None:
        for card in self.cards:
            card.worker.start(lambda _w, c=card: c.refresh())

    def wait_ready(self, timeout: float = 900) -> list[dict]:
        """Waits for every worker to be ready or failed; one line per worker."""
        deadline = time.monotonic() + timeout
        for wk in self.workers:
            wk.wait_ready(max(0.0, deadline - time.monotonic()))
        return [{"model": wk.label, "state": wk.state, "pid": wk.info.get("pid"), "threads": wk.threads,
                 "load_s": wk.info.get("load_s"), "error": wk.error} for wk in self.workers]

    def close(self) -> None:
        for wk in self.workers:
            wk.stop()
        self.store.close()

    # ================================================================ the form
    def load_case(self, case_id: str) -> None:
        """Fill the form (and a fresh course record) with a bundled case; '' empties it for a
        case typed in by hand."""
        fields = diagnosis.case_fields(case_id, "case") if case_id else {k: "" for k, _ in diagnosis.FIELDS}
        with self._lock:  # another patient: no round to regenerate
            self._stop_running()
            self.round_id = None
        for key, value in fields.items():
            self.inputs[key].value = value
        self.case_ref = case_id or None
        self.record_editor.value = diagnosis.course_record(fields) if case_id else ""
        self._inserted = None

    def fields(self) -> dict:
        return {key: widget.value for key, widget in self.inputs.items()}

    # ================================================================ generating
    def generate(self) -> int:
        """A new round for the form's current inputs: every model at once. Pressing it again
        after editing the inputs is a regeneration: a new round linked to the previous one,
        whose unfinished answers are stopped."""
        fields = diagnosis.check_inputs(self.fields())
        if self.case_ref and fields != diagnosis.check_inputs(diagnosis.case_fields(self.case_ref)):
            self.case_ref = None  # edited: no longer the bundled case as shipped
        if not self.record_editor.value.strip():
            self.record_editor.value = diagnosis.course_record(fields)
        # Our own workers are left out: another busy process would slow every answer.
        load = sysinfo.machine_load(interval_s=0.2)
        with self._lock:
            parent = self.round_id
            if parent is not None:
                self.store.action("regenerate", parent)
                self._stop_running()
            round_id = self.store.new_round(WORKFLOW, self.session_id, fields, self.template, self.max_new_tokens,
                                            parent_round_id=parent, case_ref=self.case_ref, origin=self.origin,
                                            machine_load=load)
            self.round_id = round_id
            self.say(f"第 {round_id} 轮 · round {round_id}" + (f" (regenerated from round {parent})" if parent else "")
                     + f": {len(self.cards)} models generating", new_round=True)
            warning = sysinfo.load_warning(load)
            if warning:
                self.say(warning, "warning")
            for card in self.cards:
                model = {**card.worker.spec, **card.worker.info}
                output_id = self.store.new_output(round_id, card.slot, {
                    "label": card.worker.label, "backend": model["backend"], "precision": model["precision"],
                    "model_path": model.get("model_path") or model.get("path"),
                    "fingerprint": model.get("fingerprint")})
                card.begin(round_id, output_id)
                self._jobs[output_id] = card.worker.submit(
                    output_id, fields, self.template, self.max_new_tokens,
                    lambda kind, msg, c=card, o=output_id: self._on_event(c, o, kind, msg))
        return round_id

    def _stop_running(self) -> None:
        """Superseded answers still generating are stopped (stored as cancelled)."""
        for card in self.cards:
            if card.status == "running":
                card.worker.cancel(card.output_id)

    def _on_event(self, card: ModelCard, output_id: int, kind: str, msg: dict) -> None:
        if kind == "done":  # stored first: the database is the record, the card is a view
            self.store.finish_output(output_id, msg["status"], text=msg.get("text") or "", error=msg.get("error"),
                                     truncation_note=msg.get("truncation"), prompt_tokens=msg.get("prompt_tokens"),
                                     new_tokens=msg.get("new_tokens"), ttft_ms=msg.get("ttft_ms"),
                                     total_ms=msg.get("total_ms"))
        if kind == "start" and msg.get("truncation") and output_id == card.output_id:
            self.say(f"{card.worker.label}: {msg['truncation']}", "warning")
        card.on_event(output_id, kind, msg)

    def wait(self, timeout: float = 600) -> list[dict]:
        """Block until every answer of every round so far is finished (headless use)."""
        deadline = time.monotonic() + timeout
        for job in list(self._jobs.values()):
            job.done.wait(max(0.0, deadline - time.monotonic()))
        return self.results()

    def results(self) -> list[dict]:
        return [{"model": c.worker.label, "round": c.round_id, "status": c.status, "error": c.error,
                 "truncated": bool(c.warning), **c.timing, "chars": len(c.text), "streamed_chunks": c.n_chunks,
                 "text": c.text} for c in self.cards]

    # ================================================================ doctor actions
    def _card(self, slot: int, action: str) -> ModelCard:
        if not 0 <= slot < len(self.cards):
            raise MedwbError(f"slot {slot}: there are {len(self.cards)} models (0-{len(self.cards) - 1})")
        card = self.cards[slot]
        if card.status != "ok":
            raise MedwbError(f"{card.worker.label}: cannot {action} an answer that is {card.status}"
                             + (" (still generating; wait for it)" if card.status == "running" else ""))
        return card

    def view(self, slot: int) -> str:
        card = self._card(slot, "view")
        self.store.action("view", card.round_id, card.output_id)
        self.viewer.value = f"<b>{html.escape(card.worker.label)}</b>" + _pre(card.text)
        return card.text

    def backfill(self, slot: int) -> tuple[int, int]:
        """Pick this answer: insert it into the record editor (一键回填), highlighted."""
        card = self._card(slot, "back-fill")
        record, span = diagnosis.backfill(self.record_editor.value, card.text, self._inserted)
        self.store.action("backfill", card.round_id, card.output_id)
        self._inserted = (span[0], span[1], record[span[0]:span[1]])
        self.record_editor.value = record  # its observer redraws the highlighted view
        self.say(f"已回填 {card.worker.label} 的结果 (characters {span[0]}–{span[1]} of the record)")
        return span

    def _show_record(self) -> None:
        ins = self._inserted
        valid = ins and self.record_editor.value[ins[0]:ins[1]] == ins[2]
        self.record_view.value = diagnosis.highlight(self.record_editor.value, ins[:2] if valid else None)

    def copy(self, slot: int) -> str:
        """Copy: the text goes to the copy box and, in a browser, to the clipboard."""
        from IPython.display import Javascript, display
        card = self._card(slot, "copy")
        self.store.action("copy", card.round_id, card.output_id)
        self.copy_area.value = card.text
        with self.clipboard:
            self.clipboard.clear_output()
            display(Javascript(f"navigator.clipboard && navigator.clipboard.writeText({json.dumps(card.text)});"))
        return card.text

    def vote(self, slot: int, like: bool) -> None:
        card = self._card(slot, "rate")
        self.store.action("like" if like else "dislike", card.round_id, card.output_id)
        self.say(f"{'👍' if like else '👎'} {card.worker.label} (round {card.round_id})")

    def report_error(self, slot: int, category: str, detail: str = "") -> None:
        card = self._card(slot, "report")
        if category not in feedback.ERROR_CATEGORIES:
            raise MedwbError(f"error category {category!r}: use one of {', '.join(feedback.ERROR_CATEGORIES)}")
        self.store.action("report_error", card.round_id, card.output_id, category=category,
                          detail=detail.strip() or None)
        card.error_detail.value = ""
        self.say(f"已报错 reported: {card.worker.label} · {category}")

    # ================================================================ scripted demo
    SCRIPTED_STEPS = ("generate", "doctor_actions", "long_record", "missing_field")

    def scripted_demo(self, step: str, case_id: str = "") -> list[dict] | str:
        """Drive the app through its widgets as a doctor would, for headless runs (notebook 04
        under papermill, workshops without a browser): every click goes through the same
        handlers and is stored like a real one (rounds are marked origin='scripted').

        generate: pick ``case_id`` (else the first bundled case) and press 生成; the answers.
        doctor_actions: view every answer, back-fill the first, like it, dislike the second,
        copy the last and report an error on it; the status line.
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
        if step == "long_record":
            self.inputs["auxiliary_exams"].value += "血常规：白细胞12.1×10^9/L，中性粒细胞百分比85%。" * 120
            self.generate_button.click()
            return self.wait()
        if step == "missing_field":
            self.inputs["chief_complaint"].value = ""
            self.generate_button.click()
            return self.status_text
        ok = [c for c in self.cards if c.status == "ok"]
        if not ok:
            raise MedwbError("no answer finished: run the 'generate' step first (and check the cards' errors)")
        for card in ok:
            card.view_button.click()
        ok[0].backfill_button.click()
        ok[0].like_button.click()
        ok[1 % len(ok)].dislike_button.click()
        ok[-1].copy_button.click()
        ok[-1].error_category.value = ok[-1].error_category.options[1]
        ok[-1].error_detail.value = "鉴别诊断遗漏了重要疾病"
        ok[-1].report_button.click()
        return self.status_text

    # ================================================================ reporting
    def summary(self):
        """Per model: like rate, adoption (back-fill) rate, error reports, latency; written
        to feedback_summary.csv in the run folder as well."""
        table = feedback.summary(self.store.path, WORKFLOW)
        if self.run_dir is not None and not table.empty:
            from medwb.paths import write_text_atomic
            write_text_atomic(self.run_dir / "feedback_summary.csv", table.to_csv())
        return table

    def stored_counts(self) -> dict:
        """Rows in the feedback database: rounds, outputs by status, actions by type."""
        outputs, actions = self.store.rows("outputs"), self.store.rows("actions")
        count = lambda rows, key: {v: sum(r[key] == v for r in rows) for v in sorted({r[key] for r in rows})}  # noqa: E731
        return {"database": str(self.store.path), "rounds": len(self.store.rows("rounds")),
                "outputs": count(outputs, "status"), "actions": count(actions, "action")}
