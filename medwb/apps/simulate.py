"""A month of SIMULATED doctor activity, for teaching the usage report without doctors.

``medwb feedback simulate --db PATH`` drives the two real apps (the same classes, workers,
rounds, checks and store as notebooks 04 and 05) on the demo model: every draft is really
generated and checked, and every latency is real. Only the doctors are simulated: on each
simulated day (fewer at weekends) they open bundled records; whether they back-fill, vote,
report an error or edit and save depends on what the draft really is (the true diagnosis
named, five complete sections, how many findings are flagged), with a seeded random draw and
a first fortnight of getting used to the tool. The rows carry simulated timestamps.

The database is marked simulated (``meta.simulated``), every row has origin 'simulated', and
the report says SIMULATED on every page. It is always a separate file: simulate refuses a
database that holds real feedback.
"""
from __future__ import annotations

import datetime as _dt
import random
from pathlib import Path

from medwb.apps import feedback
from medwb.errors import MedwbError

DEFAULT_MODELS = ("openvino-genai:int8/f32",)
# Records opened per working day (min, max) per workflow; weekends a third of that.
OPENS_PER_DAY = {"diagnosis": (1, 3), "discharge": (1, 2)}


class Clock:
    """The simulated time the store stamps rows with; the simulator moves it forward."""

    def __init__(self, start: _dt.datetime):
        self.now = start

    def advance(self, seconds: float) -> None:
        self.now += _dt.timedelta(seconds=seconds)

    def __call__(self) -> str:
        return self.now.isoformat(timespec="milliseconds")


def check_database(path, fresh: bool = False) -> Path:
    """A new file, or one an earlier simulation wrote: never a store with real feedback.
    ``fresh``: an earlier simulation's file is removed first (a rerun starts over)."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise MedwbError("db is empty: give a new file such as runs/simulated-month.sqlite")
    if p.exists():
        store = feedback.FeedbackStore(p, parameter="db")
        real = store.meta("simulated") != "1" and (store.rows("rounds") or store.rows("events"))
        store.close()
        if real:
            raise MedwbError(f"db '{p}' holds real feedback: simulated activity goes into a separate database; "
                             "give a new file such as runs/simulated-month.sqlite")
        if fresh:
            for f in (p, p.with_name(p.name + "-wal"), p.with_name(p.name + "-shm")):
                f.unlink(missing_ok=True)
    else:
        feedback.FeedbackStore._check_path(p, "db")  # a folder it can make and write, before any model starts
    return p


def _doctor_p(quality: float, day: int) -> float:
    """The chance a simulated doctor back-fills a draft: more for better drafts, less in the
    first fortnight (the case study reports 15-23% after a month)."""
    warm_up = 0.5 + 0.5 * min(1.0, day / 14)
    return max(0.02, min(0.9, (0.05 + 0.45 * quality) * warm_up))


def simulate(db, days: int = 30, seed: int = 0, models=DEFAULT_MODELS, start: str = "2026-11-02",
             threads: int = 0, fresh: bool = False, log=print) -> dict:
    """Writes ``days`` of simulated activity into ``db``; returns counts of what it wrote."""
    from medwb.apps.diagnosis import record as dx_record
    from medwb.apps.diagnosis.app import DiagnosisApp
    from medwb.apps.discharge.app import DischargeApp
    from medwb.tasks import corpus

    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 366:
        raise MedwbError(f"days must be a whole number of days from 1 to 366, got {days!r}")
    try:
        first = _dt.datetime.fromisoformat(start).replace(hour=8, tzinfo=_dt.timezone.utc)
    except ValueError as e:
        raise MedwbError(f"start {start!r}: give a date as YYYY-MM-DD") from e
    path = check_database(db, fresh)
    clock = Clock(first)
    rng = random.Random(seed)
    common = dict(models=list(models), feedback_db=str(path), threads=threads, origin="simulated", clock=clock)
    dx = DiagnosisApp(max_new_tokens=200, **common)
    dc = DischargeApp(max_new_tokens=400, **common)
    dx.store.set_meta("simulated", "1")
    truth = {r["case"]["case_id"]: r["case"]["disease"] for r in corpus.load_records("diagnosis")}
    vocab = corpus.diagnosis_vocabulary()
    dx_ids, dc_ids = list(dx_record.bundled_cases()), [rid for _, rid in dc.record_picker.options[1:]]
    counts = {"days": days, "diagnosis_opens": 0, "discharge_opens": 0, "saves": 0}
    try:
        for app in (dx, dc):
            app.start()
        states = [w["state"] for app in (dx, dc) for w in app.wait_ready()]
        if "ready" not in states:
            raise MedwbError(f"no model loaded for the simulation: {[w.error for w in dx.workers + dc.workers]}")
        for day in range(days):
            date = first + _dt.timedelta(days=day)
            weekend = date.weekday() >= 5
            visits = []
            for kind in ("diagnosis", "discharge"):
                low, high = OPENS_PER_DAY[kind]
                n = rng.randint(0, 1) if weekend else rng.randint(low, high)
                visits += [(rng.randint(8 * 60, 17 * 60 + 59), kind) for _ in range(n)]
            for minute, kind in sorted(visits):  # in the order of the day
                clock.now = date.replace(hour=minute // 60, minute=minute % 60)
                if kind == "diagnosis":
                    _diagnosis_visit(dx, rng, rng.choice(dx_ids), truth, vocab, day, clock)
                else:
                    counts["saves"] += _discharge_visit(dc, rng, rng.choice(dc_ids), day, clock)
                counts[f"{kind}_opens"] += 1
            log(f"simulated day {day + 1}/{days} ({date:%a %d %b})")
    finally:
        dx.close()
        dc.close()
    return counts


def _act(app, rng, card, quality: float, day: int, clock: Clock, flags: int, backfill) -> None:
    """One simulated doctor's reaction to one draft."""
    clock.advance(rng.uniform(20, 120))
    if rng.random() < 0.7:
        app.view(card.slot)
    used = rng.random() < _doctor_p(quality, day)
    if used:
        clock.advance(rng.uniform(5, 60))
        backfill(card.slot)
    vote = rng.random()
    if vote < (0.55 if used else 0.08):
        app.vote(card.slot, True)
    elif vote > (0.92 if used else 0.7):
        app.vote(card.slot, False)
    if rng.random() < min(0.4, 0.03 + 0.04 * flags + (0.1 if quality < 0.5 else 0)):
        category = feedback.ERROR_CATEGORIES[0] if flags else rng.choice(feedback.ERROR_CATEGORIES[1:])
        app.report_error(card.slot, category, "simulated")


def _diagnosis_visit(app, rng, case_id, truth, vocab, day, clock) -> None:
    from medwb.tasks import workflow
    app.load_case(case_id)
    clock.advance(rng.uniform(30, 300))
    app.generate()
    app.wait()
    for card in app.cards:
        if card.status != "ok":
            continue
        flags = len(card.analysis.get("flags") or [])
        hit = workflow.diagnosis_top3_hit(card.text, truth[case_id], vocab)
        quality = (1.0 if hit else 0.2) * (1 - min(flags, 5) / 10)
        _act(app, rng, card, quality, day, clock, flags, app.backfill)


def _discharge_visit(app, rng, record_id, day, clock) -> int:
    saves = 0
    app.open_record(record_id)
    app.wait()
    if rng.random() < 0.15:  # the doctor adds a note and saves: the drafts regenerate
        clock.advance(rng.uniform(60, 600))
        app.source_editor.value = app.source_editor.value.replace(
            "\n出院前查房：", "\n第30日，复查血常规：白细胞6.5×10^9/L。\n出院前查房：")
        app.save()
        app.wait()
        saves += 1
    elif rng.random() < 0.1:
        app.save()  # saved unchanged: stored, nothing generated
    for card in app.cards:
        if card.status != "ok":
            continue
        sections = card.analysis.get("sections") or {}
        flags = len(card.analysis.get("flags") or [])
        complete = sum(v == "complete" for v in sections.values()) / max(1, len(sections))
        quality = complete * (1 - min(flags, 5) / 10)
        _act(app, rng, card, quality, day, clock, flags, app.backfill)
    return saves
