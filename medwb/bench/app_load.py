"""Load on the app server: N simulated doctors sharing one model pool (``medwb app-load``).

One pool is started from the app's config (as ``medwb app`` starts it), then for each N
in ``doctors`` N doctors work at once, each with a page of its own (a DiagnosisApp
connected to the pool, as a Voila kernel is) doing ``rounds`` rounds: open a bundled case,
generate, view the answers, like or dislike each, back-fill one, sometimes report an error,
think a little, next case. Measured per answer: the time it waited for its model
(``queue_s``), first-token and generation time inside the worker, and per round the time
the doctor waited for all answers; per N: throughput, the pool's memory (the model
processes' RSS, which must not grow with N) and whether every request got an answer or a
clear error and every action became a row. Records go to
``<run>/records/app_load.jsonl``; a benchmark, never a test with a time limit.
"""
from __future__ import annotations

import random
import sqlite3
import statistics
import threading
import time
from pathlib import Path

from medwb import sysinfo
from medwb.errors import MedwbError


def _pct(values: list[float], q: float):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return round(values[k], 3)


def _pool_rss_mb(pool) -> float:
    import psutil
    total = 0
    for wk in pool.workers:
        try:
            total += psutil.Process(wk.info["pid"]).memory_info().rss
        except (KeyError, psutil.NoSuchProcess):
            pass
    return round(total / 2**20, 1)


def _doctor(sock: str, db: str, cases: list[str], rounds: int, think_s: float, seed: int, out: dict,
            max_new_tokens: int) -> None:
    """One simulated doctor; appends answer and round rows to ``out``, counts actions."""
    from medwb.apps import feedback
    from medwb.apps.diagnosis.app import DiagnosisApp
    rng = random.Random(seed)
    app = None
    try:
        app = DiagnosisApp(max_new_tokens=max_new_tokens, feedback_db=db, origin="simulated", pool=sock)
        app.start()
        app.wait_ready(300)
        for case_id in rng.sample(cases, rounds):  # a new case each round (the same one again would
            app.case_picker.value = case_id          # be a regeneration, stored as one more action)
            t0 = time.monotonic()
            round_id = app.generate()
            results = app.wait(900)
            wall = time.monotonic() - t0
            out["rounds"].append({"round_s": round(wall, 3)})
            actions = 0
            for slot, (card, r) in enumerate(zip(app.cards, results)):
                job = app._jobs[card.output_id]
                result = job.result or {}
                out["answers"].append({"model": r["model"], "status": r["status"], "error": r["error"],
                                       "queue_s": result.get("queue_s"), "ttft_ms": r.get("ttft_ms"),
                                       "total_ms": r.get("total_ms"), "new_tokens": r.get("new_tokens")})
                if r["status"] != "ok":
                    continue
                app.view(slot)
                app.vote(slot, like=rng.random() < 0.7)
                actions += 2
                if rng.random() < 0.15:
                    app.report_error(slot, rng.choice(feedback.ERROR_CATEGORIES), "")
                    actions += 1
            ok = [s for s, r in enumerate(results) if r["status"] == "ok"]
            if ok:
                app.backfill(rng.choice(ok))
                actions += 1
            out["actions_done"] += actions
            out["round_ids"].append(round_id)
            time.sleep(rng.uniform(0.5, 1.5) * think_s)
    except Exception as e:  # noqa: BLE001  (one doctor's failure is a finding, not the end of the run)
        out["errors"].append(f"{type(e).__name__}: {e}")
    finally:
        if app is not None:
            app.close()


def check(doctors, rounds: int, think_s: float) -> None:
    """The benchmark's numbers, before anything is prepared or written."""
    if not doctors or any(not isinstance(n, int) or n < 1 for n in doctors):
        raise MedwbError(f"--doctors {doctors!r}: give positive counts, e.g. 1,5,10")
    if not 1 <= rounds <= 50:
        raise MedwbError(f"--rounds {rounds}: 1 to 50 rounds per doctor (a new bundled case each)")
    if think_s < 0:
        raise MedwbError(f"--think-s {think_s}: a time in seconds, 0 or more")


def run(config_path, doctors=(1, 5, 10), rounds: int = 3, think_s: float = 2.0, run_dir=None,
        seed: int = 0, log=print) -> list[dict]:
    from medwb import runner
    from medwb.apps import serve
    from medwb.apps.diagnosis import record as diagnosis
    from medwb.apps.pool import ModelPool
    from medwb.paths import check_writable_dir

    check(doctors, rounds, think_s)
    config = serve.load_config(config_path)
    if run_dir:
        check_writable_dir(run_dir, "--run-dir")
    serve.check_pool_fits(config["specs"], log=log)
    run_dir = Path(run_dir) if run_dir else runner.new_run_dir()  # made only once everything checked out
    run_dir.mkdir(parents=True, exist_ok=True)
    db = str(run_dir / "app_load.sqlite")
    pool = ModelPool.from_config(config, run_dir)
    cases = [cid for _, cid in diagnosis.case_choices()]
    max_new_tokens = config["max_new_tokens"]["diagnosis"]
    cpu = sysinfo.cpu()
    records = []
    try:
        pool.start()
        ready = pool.wait_ready(config["load_timeout_s"])
        if any(w["state"] != "ready" for w in ready):
            raise MedwbError(f"the pool did not start: {[w for w in ready if w['state'] != 'ready']}")
        rss_idle = _pool_rss_mb(pool)
        pids = [wk.info["pid"] for wk in pool.workers]
        for n in doctors:
            load = sysinfo.check_load(log=log)
            outs = [{"answers": [], "rounds": [], "errors": [], "actions_done": 0, "round_ids": []} for _ in range(n)]
            doctors_ = [threading.Thread(target=_doctor, args=(str(pool.socket_path), db, cases, rounds, think_s,
                                                               seed * 1000 + n * 100 + i, outs[i], max_new_tokens))
                        for i in range(n)]
            t0 = time.monotonic()
            for t in doctors_:
                t.start()
            peak = [0.0]
            while any(t.is_alive() for t in doctors_):
                peak[0] = max(peak[0], _pool_rss_mb(pool))
                time.sleep(0.5)
            wall = time.monotonic() - t0
            answers = [a for o in outs for a in o["answers"]]
            round_s = [r["round_s"] for o in outs for r in o["rounds"]]
            ok = [a for a in answers if a["status"] == "ok"]
            stored = _stored_actions(db, [rid for o in outs for rid in o["round_ids"]])
            expected_answers = n * rounds * len(config["specs"])
            record = {
                "record_type": "app_load", "doctors": n, "rounds_per_doctor": rounds, "think_s": think_s,
                "models": [s["label"] for s in config["specs"]], "threads_per_model": pool.workers[0].threads,
                "max_new_tokens": max_new_tokens, "answers": len(answers), "answers_expected": expected_answers,
                "ok": len(ok), "errors": [a["error"] for a in answers if a["status"] != "ok"],
                "doctor_errors": [e for o in outs for e in o["errors"]],
                "every_request_answered": len(answers) == expected_answers and all(
                    a["status"] == "ok" or a["error"] for a in answers),
                "actions_done": sum(o["actions_done"] for o in outs), "actions_stored": stored,
                "wall_s": round(wall, 2), "answers_per_min": round(len(ok) / wall * 60, 2),
                "tokens_per_s": round(sum(a["new_tokens"] or 0 for a in ok) / wall, 2),
                "pool_rss_mb_idle": rss_idle, "pool_rss_mb_peak": round(peak[0], 1),
                "model_pids_unchanged": [wk.info.get("pid") for wk in pool.workers] == pids,
                "machine_load": load, "cpu": cpu.get("model"),
            }
            for key, values in (("queue_s", [a["queue_s"] for a in ok]), ("ttft_ms", [a["ttft_ms"] for a in ok]),
                                ("total_ms", [a["total_ms"] for a in ok]), ("round_s", round_s)):
                record[key] = {f"p{q}": _pct(values, q) for q in (50, 90, 99)}
                record[key]["mean"] = round(statistics.fmean(values), 3) if values else None
            records.append(record)
            log(format_row(record))
    finally:
        pool.close()
    from medwb.bench.records import write_records
    path = write_records(records, run_dir, "app_load")
    log(f"records: {path}")
    return records


def _stored_actions(db: str, round_ids: list[int]) -> int:
    if not round_ids:
        return 0
    con = sqlite3.connect(db)
    try:
        marks = ",".join("?" * len(round_ids))
        return con.execute(f"SELECT COUNT(*) FROM actions WHERE round_id IN ({marks})", round_ids).fetchone()[0]
    finally:
        con.close()


def format_row(r: dict) -> str:
    return (f"{r['doctors']:>3} doctors: {r['ok']}/{r['answers_expected']} answers ok in {r['wall_s']:.0f} s "
            f"({r['answers_per_min']:.1f}/min, {r['tokens_per_s']:.1f} tokens/s); wait for a turn p50 "
            f"{r['queue_s']['p50']} s p90 {r['queue_s']['p90']} s; first token p50 {r['ttft_ms']['p50']} ms; "
            f"a doctor's round p50 {r['round_s']['p50']} s p90 {r['round_s']['p90']} s; pool RSS "
            f"{r['pool_rss_mb_idle']:.0f} -> {r['pool_rss_mb_peak']:.0f} MB; actions stored "
            f"{r['actions_stored']}/{r['actions_done']}")
