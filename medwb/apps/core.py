"""The common core of the clinical apps (鉴别诊断 in notebook 04, 出院记录 in notebook 05).

Both workflows are the same machine: a source record, N models in long-lived worker
processes (``medwb.apps.workers``) that generate in parallel and stream into one card each,
rounds that a newer round supersedes (its unfinished answers are cancelled), doctor actions
on an answer (view, 一键回填, copy, like/dislike, report an error), grounding flags on what an
answer states that the record does not, and every event in the SQLite feedback store
(``medwb.apps.feedback``) the moment it happens. A workflow subclass adds its form, how an
answer is checked (``analyse``) and where a back-filled answer goes.

Every button is a method too, so a notebook can drive the app headless (``scripted_demo``)
through the very handlers a doctor's clicks reach.
"""
from __future__ import annotations

import html
import json
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from medwb import sysinfo
from medwb.apps import feedback, workers
from medwb.errors import MedwbError, check_count

STREAM_REFRESH_S = 0.1  # at most ~10 card updates a second per model while streaming
FLAG_NAMES = {"value": "数值", "date": "日期", "drug": "药物", "diagnosis": "诊断"}
# How the status line counts a round's answers (an output's status -> its words).
ROUND_STATES = {"running": "生成中 generating", "ok": "完成 done", "error": "失败 failed", "timeout": "失败 failed",
                "interrupted": "失败 failed", "cancelled": "已停止 stopped"}
# Button labels are words (in Chinese as the card's other buttons, the English in the
# tooltip and the messages), beside an icon of the widget library's own font: an emoji-only
# button shows as an empty box on a PC without an emoji font, as many hospital desktops and
# thin clients are.
LIKE, DISLIKE = "赞 like", "踩 dislike"


def pre(text: str, colour: str = "") -> str:
    style = "white-space:pre-wrap;margin:0;font-family:inherit" + (f";color:{colour}" if colour else "")
    return f"<pre style='{style}'>{html.escape(text)}</pre>"


def marked(text: str, flags: list[dict]) -> str:
    """HTML of ``text`` with every flagged span marked "not in the record"."""
    out, at = [], 0
    for f in sorted(flags, key=lambda f: f["start"]):
        if f["start"] < at:  # overlapping flags: the first one marks the span
            continue
        out.append(html.escape(text[at:f["start"]]))
        title = f"{FLAG_NAMES.get(f['kind'], f['kind'])}: 病历中未找到 (not in the record), please check"
        out.append(f"<mark style='background:#ffd966' title='{html.escape(title)}'>"
                   f"{html.escape(text[f['start']:f['end']])}</mark>")
        at = f["end"]
    out.append(html.escape(text[at:]))
    return "<pre style='white-space:pre-wrap;margin:0;font-family:inherit'>" + "".join(out) + "</pre>"


class ModelCard:
    """One model's answer for the current round, and the doctor's buttons for it."""

    def __init__(self, app: "ClinicalApp", slot: int, worker: workers.ModelWorker):
        import ipywidgets as w
        self.app, self.slot, self.worker = app, slot, worker
        self.round_id = self.output_id = None
        self.text, self.status, self.error, self.warning, self.timing = "", "idle", None, None, {}
        self.analysis: dict = {}   # the workflow's checks of a finished answer (flags, sections)
        self.n_chunks = 0  # text pieces streamed into the card this round
        self._last_refresh = 0.0
        self.header = w.HTML()
        self.checks = w.HTML()
        self.body = w.HTML(layout=w.Layout(min_height="12em", max_height="24em", overflow="auto",
                                           border="1px solid #ddd", padding="4px"))
        self.view_button = w.Button(description="查看", tooltip="view this answer in full")
        self.backfill_button = w.Button(description="一键回填", button_style="primary",
                                        tooltip="pick this answer and insert it into the record")
        self.copy_button = w.Button(description="复制", tooltip="copy this answer")
        self.like_button = w.Button(description=LIKE.split()[0], icon="thumbs-up", layout=w.Layout(width="5em"),
                                    tooltip=LIKE)
        self.dislike_button = w.Button(description=DISLIKE.split()[0], icon="thumbs-down",
                                       layout=w.Layout(width="5em"), tooltip=DISLIKE)
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
        self.buttons = [self.view_button, self.backfill_button, self.copy_button, self.like_button,
                        self.dislike_button, self.report_button]
        rows = [self.header, self.checks, self.body,
                w.HBox([self.view_button, self.backfill_button, self.copy_button, self.like_button,
                        self.dislike_button]),
                *self.extra_rows(),
                w.HBox([self.error_category, self.error_detail, self.report_button])]
        self.widget = w.VBox(rows, layout=w.Layout(width="33%", min_width="18em", padding="4px"))
        self.refresh()

    @property
    def name(self) -> str:
        """How messages name this model: its label, or 模型 A/B/C on a doctors' web page."""
        return f"模型 {chr(65 + self.slot)}" if self.app.pool is not None else self.worker.label

    def extra_rows(self) -> list:
        """Workflow-specific controls under the main buttons (e.g. per-section back-fill)."""
        return []

    # ---------------------------------------------------------------- state
    def begin(self, round_id: int, output_id: int) -> None:
        self.round_id, self.output_id = round_id, output_id
        self.text, self.status, self.error, self.warning, self.timing = "", "running", None, None, {}
        self.analysis, self.n_chunks = {}, 0
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
            self.analysis = msg.get("analysis") or {}
        self.refresh()

    def checks_html(self) -> str:
        """The flags line; a workflow adds its own checks (section completeness)."""
        flags = self.analysis.get("flags")
        if flags is None:
            return ""
        if not flags:
            return "<small style='color:#2e7d32'>✓ 所有数值、日期、药物均见于病历 (every value, date and drug is in the record)</small>"
        kinds = ", ".join(f"{FLAG_NAMES.get(k, k)} {sum(f['kind'] == k for f in flags)}"
                          for k in FLAG_NAMES if any(f["kind"] == k for f in flags))
        return (f"<small style='color:#b36b00'>⚠ {len(flags)} 处病历中未找到 (not in the record, highlighted: "
                f"please check): {html.escape(kinds)}</small>")

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
        if self.app.pool is not None:  # a web page for doctors: the technical details folded away
            self.header.value = (f"<b>{self.name}</b> <small>· {html.escape(state.split()[0])}</small>"
                                 f"<details><summary><small>详情 details</small></summary><small>"
                                 f"{html.escape(w.label)} · {html.escape(state)} · {w.threads} thread(s)<br>"
                                 f"{html.escape(timing)}</small></details>")
        else:
            self.header.value = (f"<b>{html.escape(w.label)}</b> <small>· {html.escape(state)} · "
                                 f"{w.threads} thread(s)</small><br><small>{html.escape(timing)}</small>")
        self.checks.value = self.checks_html() if self.status == "ok" else ""
        parts = []
        if self.warning:
            parts.append(pre("⚠ " + self.warning, "#b36b00"))
        if self.error and self.status != "ok":
            parts.append(pre(f"✖ {self.status}: {self.error}", "#c00000"))
        elif w.state == "failed" and self.status == "idle":
            parts.append(pre(f"✖ {w.error}", "#c00000"))
        parts.append(marked(self.text, self.analysis.get("flags") or []) if self.status == "ok" else pre(self.text))
        self.body.value = "".join(parts)
        usable = self.status == "ok"
        for b in self.buttons:
            b.disabled = not usable


class ClinicalApp:
    """Workers, rounds, cards, doctor actions and the store, shared by the two workflows.

    A subclass sets ``WORKFLOW`` (stored with every round), ``PROMPT_KIND`` (how the worker
    fits the prompt into a model's context: ``medwb.apps.workers.FITTERS``) and ``CARD``,
    builds its form in ``_build_widgets`` and implements ``analyse`` and ``backfill``.
    """
    WORKFLOW = ""
    PROMPT_KIND = ""
    CARD = ModelCard
    NEW_WORDS = "新病例 · new case"   # the new-patient button and message

    def __init__(self, models, max_new_tokens: int, feedback_db: str = "", run_dir: str = "",
                 store_text: bool = False, threads: int = 0, template: str = "", load_timeout_s: float = 900,
                 generate_timeout_s: float = 300, origin: str = "ui", clock=None, pool: str = ""):
        # With a pool (app mode) the server's shared models answer (medwb.apps.pool), not this page's own.
        if not pool and (isinstance(models, str) or not models):
            raise MedwbError("models must be a non-empty list, e.g. ['openvino-genai:int8/f32', 'bigdl:sym_int4']")
        specs = [] if pool else [workers.parse_model(m, i) for i, m in enumerate(models)]
        labels = [s["label"] for s in specs]
        if len(set(labels)) != len(labels):
            raise MedwbError(f"models: {labels} lists a model twice; give each a different path or a 'label'")
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise MedwbError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        check_count("threads", threads, 0, "0: the cores shared out among the models")
        for name, value in (("load_timeout_s", load_timeout_s), ("generate_timeout_s", generate_timeout_s)):
            if not isinstance(value, (int, float)) or value <= 0:
                raise MedwbError(f"{name} must be a positive number of seconds, got {value!r}")
        if origin not in feedback.ORIGINS:
            raise MedwbError(f"origin {origin!r}: use 'ui' (doctors at the widgets), 'scripted' (a notebook "
                             "driving the app) or 'simulated' (medwb feedback simulate); reports can leave the "
                             "last two out")
        self.template, self.origin = template, origin
        self.pool = None
        if pool:  # connected first: a page that cannot reach the pool writes nothing
            from medwb.apps.pool import PoolClient
            self.pool = PoolClient(pool)
        self.run_dir = Path(run_dir) if run_dir else None
        db = feedback_db or (self.run_dir / "feedback.sqlite" if self.run_dir else Path("feedback.sqlite"))
        self.store = feedback.FeedbackStore(db, store_text=store_text, clock=clock)
        self.max_new_tokens, self.session_id = max_new_tokens, uuid.uuid4().hex
        if self.pool is not None:
            self.workers = self.pool.workers
        else:
            n_threads = workers.split_threads(len(specs), threads)
            log_dir = (self.run_dir or self.store.path.parent) / "workers"
            self.workers = [workers.ModelWorker(s, n_threads, log_dir, load_timeout_s, generate_timeout_s)
                            for s in specs]
        self.round_id: int | None = None
        self._parent_round: int | None = None   # the round the current one regenerates
        self.case_ref: str | None = None     # a bundled case/record as shipped (None once edited)
        self.record_ref: str | None = None   # the record the doctor has open (usage rate)
        self.messages: list[tuple[str, str]] = []
        self._headline: int | None = None   # the messages' index of the current round's status line
        self._jobs: dict[int, workers.Job] = {}     # output_id -> job, every round
        self._typed = 0
        self._lock = threading.RLock()
        self.cards = [self.CARD(self, i, wk) for i, wk in enumerate(self.workers)]

    # ================================================================ messages
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
                self.messages, self._headline = [], None
            self.messages.append((level, text))
            self._show_messages()

    def _show_messages(self) -> None:
        marks = {"error": ("✖ ", "#c00000"), "warning": ("⚠ ", "#b36b00")}
        self.status.value = "".join(pre(marks.get(lv, ("", ""))[0] + t, marks.get(lv, ("", ""))[1])
                                    for lv, t in self.messages)

    def round_line(self) -> str:
        """The current round's status line: its answers counted by state, as the cards show them."""
        parent = self._parent_round
        counts = Counter(ROUND_STATES.get(c.status, c.status) for c in self.cards if c.round_id == self.round_id)
        states = ", ".join(f"{n} {word}" for word, n in counts.items())
        return (f"第 {self.round_id} 轮 · round {self.round_id}"
                + (f" (regenerated from round {parent})" if parent else "") + f": {len(self.cards)} models · {states}")

    def _update_round_line(self) -> None:
        with self._lock:
            if self._headline is not None and self._headline < len(self.messages):
                self.messages[self._headline] = ("info", self.round_line())
                self._show_messages()

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
        if self.pool is not None:
            self.pool.close()
        self.store.close()

    # ================================================================ records
    def new_typed_ref(self) -> str:
        """A record typed or pasted in this session has no id of its own: it gets one, so its
        open, saves and back-fills count as one record in the usage rate."""
        self._typed += 1
        return f"typed-{self.session_id[:8]}-{self._typed}"

    def record_event(self, event: str, round_id: int | None = None) -> int:
        return self.store.event(self.WORKFLOW, self.session_id, self.origin, self.record_ref, event, round_id)

    def new_case(self) -> None:
        """新病例 / 新病历: the doctor moves on to another patient. The record that was open
        keeps everything stored for it; its answers still generating are stopped; the form
        is emptied, and the next generation opens a new record instead of regenerating the
        last one's."""
        self._moved_on()
        self._clear_form()
        self.say(f"{self.NEW_WORDS}: the form is empty; what is generated next is a new record", new_round=True)

    def _moved_on(self) -> None:
        """Another patient from here on (a new case, or a form the doctor emptied by hand)."""
        with self._lock:
            self._stop_running()
            self.round_id = None
        self.record_ref = self.case_ref = None

    def _clear_form(self) -> None:
        """Empty the workflow's form and editors (a subclass's widgets)."""
        raise NotImplementedError

    # ================================================================ generating
    def start_round(self, fields: dict) -> int:
        """A new round for ``fields``: every model at once. A round while another is open is
        a regeneration: linked to the previous one, whose unfinished answers are stopped."""
        # Our own workers are left out: another busy process would slow every answer.
        load = sysinfo.machine_load(interval_s=0.2)
        with self._lock:
            parent = self.round_id
            self._parent_round = parent
            if parent is not None:
                self.store.action("regenerate", parent)
                self._stop_running()
            round_id = self.store.new_round(self.WORKFLOW, self.session_id, fields, self.template,
                                            self.max_new_tokens, parent_round_id=parent, case_ref=self.case_ref,
                                            origin=self.origin, machine_load=load, record_ref=self.record_ref)
            self.round_id = round_id
            for card in self.cards:  # this round's cards count as generating from now on
                card.round_id, card.status = round_id, "running"
            self.say(self.round_line(), new_round=True)
            self._headline = 0
            warning = sysinfo.load_warning(load)
            if warning and self.pool is None:  # on a doctors' page it is stored with the round, not shown
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
                    lambda kind, msg, c=card, o=output_id, f=fields: self._on_event(c, o, f, kind, msg),
                    kind=self.PROMPT_KIND)
        return round_id

    def _stop_running(self) -> None:
        """Superseded answers still generating are stopped (stored as cancelled)."""
        for card in self.cards:
            if card.status == "running":
                card.worker.cancel(card.output_id)

    def analyse(self, text: str, fields: dict) -> dict:
        """The workflow's checks of a finished answer: ``flags`` (``grounding.Flag`` dicts)
        and optionally ``sections`` (status per section)."""
        return {}

    def _on_event(self, card: ModelCard, output_id: int, fields: dict, kind: str, msg: dict) -> None:
        if kind == "done":
            if msg["status"] == "ok" and msg.get("text"):
                try:
                    msg["analysis"] = self.analyse(msg["text"], fields)
                except Exception as e:  # noqa: BLE001  (a checker bug must not lose the answer)
                    msg["analysis"] = {"check_error": f"{type(e).__name__}: {e}"}
            analysis = msg.get("analysis") or {}
            # Stored first: the database is the record, the card is a view.
            self.store.finish_output(output_id, msg["status"], text=msg.get("text") or "", error=msg.get("error"),
                                     truncation_note=msg.get("truncation"), prompt_tokens=msg.get("prompt_tokens"),
                                     new_tokens=msg.get("new_tokens"), ttft_ms=msg.get("ttft_ms"),
                                     total_ms=msg.get("total_ms"), flags=analysis.get("flags"),
                                     sections=analysis.get("sections"))
        if kind == "start" and msg.get("truncation") and output_id == card.output_id:
            self.say(f"{card.name}: {msg['truncation']}", "warning")
        card.on_event(output_id, kind, msg)
        if kind == "done" and output_id == card.output_id:
            self._update_round_line()  # the status line follows the cards

    def wait(self, timeout: float = 600) -> list[dict]:
        """Block until every answer of every round so far is finished (headless use)."""
        deadline = time.monotonic() + timeout
        for job in list(self._jobs.values()):
            job.done.wait(max(0.0, deadline - time.monotonic()))
        return self.results()

    def results(self) -> list[dict]:
        return [{"model": c.worker.label, "round": c.round_id, "status": c.status, "error": c.error,
                 "truncated": bool(c.warning), **c.timing, "chars": len(c.text), "streamed_chunks": c.n_chunks,
                 "flags": len(c.analysis.get("flags") or []), "text": c.text} for c in self.cards]

    # ================================================================ doctor actions
    def _card(self, slot: int, action: str) -> ModelCard:
        if not isinstance(slot, int) or not 0 <= slot < len(self.cards):
            raise MedwbError(f"slot {slot!r}: there are {len(self.cards)} models (0-{len(self.cards) - 1})")
        card = self.cards[slot]
        if card.status != "ok":
            raise MedwbError(f"{card.worker.label}: cannot {action} an answer that is {card.status}"
                             + (" (still generating; wait for it)" if card.status == "running" else ""))
        return card

    def view(self, slot: int) -> str:
        card = self._card(slot, "view")
        self.store.action("view", card.round_id, card.output_id)
        self.viewer.value = f"<b>{html.escape(card.worker.label)}</b>" + marked(card.text, card.analysis.get("flags") or [])
        return card.text

    def backfill(self, slot: int):
        raise NotImplementedError

    def copy(self, slot: int) -> str:
        """Copy: the text goes to the copy box and, in a browser, to the clipboard."""
        card = self._card(slot, "copy")
        self.store.action("copy", card.round_id, card.output_id)
        self.copy_area.value = card.text
        # The script is set as the Output widget's outputs, not displayed inside `with clipboard:`:
        # under papermill that context makes nbclient answer on the shell channel while it awaits
        # the cell's reply, and under load the reply's wake-up was lost (notebook 04 hung in the
        # test suite; a 150 s cell timeout then found the reply waiting). Same result in a browser.
        script = f"navigator.clipboard && navigator.clipboard.writeText({json.dumps(card.text)});"
        self.clipboard.outputs = ({"output_type": "display_data", "metadata": {},
                                   "data": {"application/javascript": script}},)
        return card.text

    def vote(self, slot: int, like: bool) -> None:
        card = self._card(slot, "rate")
        self.store.action("like" if like else "dislike", card.round_id, card.output_id)
        self.say(f"{LIKE if like else DISLIKE}: {card.name} (round {card.round_id})")

    def report_error(self, slot: int, category: str, detail: str = "") -> None:
        card = self._card(slot, "report")
        if category not in feedback.ERROR_CATEGORIES:
            raise MedwbError(f"error category {category!r}: use one of {', '.join(feedback.ERROR_CATEGORIES)}")
        self.store.action("report_error", card.round_id, card.output_id, category=category,
                          detail=detail.strip() or None)
        card.error_detail.value = ""
        self.say(f"已报错 reported: {card.name} · {category}")

    # ================================================================ reporting
    def demo_review(self, none_finished: str, error_option: int, error_detail: str, on_second=None) -> str:
        """The scripted demo's review, as a doctor does it through the buttons: view every
        finished answer, back-fill the first (``on_second`` acts on another one next), like the
        first, dislike another, copy the last and report an error on it."""
        ok = [c for c in self.cards if c.status == "ok"]
        if not ok:
            raise MedwbError(none_finished)
        for card in ok:
            card.view_button.click()
        ok[0].backfill_button.click()
        second = ok[1 % len(ok)]
        if on_second is not None:
            on_second(second)
        ok[0].like_button.click()
        second.dislike_button.click()
        ok[-1].copy_button.click()
        ok[-1].error_category.value = ok[-1].error_category.options[error_option]
        ok[-1].error_detail.value = error_detail
        ok[-1].report_button.click()
        return self.status_text

    def summary(self):
        """Per model: like rate, adoption (back-fill) rate, error reports, latency; written
        to feedback_summary.csv in the run folder as well (one file for both workflows)."""
        table = feedback.summary(self.store.path, self.WORKFLOW)
        if self.run_dir is not None and not table.empty:
            from medwb.paths import write_text_atomic
            name = "feedback_summary.csv" if self.WORKFLOW == "differential_diagnosis" else f"feedback_summary_{self.WORKFLOW}.csv"
            write_text_atomic(self.run_dir / name, table.to_csv())
        return table

    def stored_counts(self) -> dict:
        """Rows in the feedback database for this session: rounds, outputs by status,
        actions by type, record events (open / save) by type."""
        rounds = {r["round_id"] for r in self.store.rows("rounds") if r["session_id"] == self.session_id}
        outputs = [o for o in self.store.rows("outputs") if o["round_id"] in rounds]
        actions = [a for a in self.store.rows("actions") if a["round_id"] in rounds]
        events = [e for e in self.store.rows("events") if e["session_id"] == self.session_id]
        count = lambda rows, key: {v: sum(r[key] == v for r in rows) for v in sorted({r[key] for r in rows})}  # noqa: E731
        return {"database": str(self.store.path), "rounds": len(rounds), "outputs": count(outputs, "status"),
                "actions": count(actions, "action"), "events": count(events, "event")}
