"""The workbench's own cost: an app's worker path against calling the backend directly.

The apps reach a model through ``medwb.apps.workers``: a long-lived process per model that
fits the record into the context, streams text chunks back over JSON lines, and a parent
thread that hands them to the card. What that path adds is measured here on the same
records, prompts and token counts:

- **direct**: a fresh process in the backend's environment (same loader, threads and
  OpenMP settings as a worker) fits each record and calls the backend's ``stream`` with a
  callback that does nothing; wall time per record;
- **via the worker**: a ``ModelWorker`` as the apps start it; wall time from ``submit`` to
  the ``done`` event, as the parent sees it.

Each path first answers one untimed warm-up record. Same greedy output in both (recorded:
``same_text`` per record). ``overhead_pct`` compares the
summed times; records go to ``<run>/records/overhead.jsonl``. A measurement, not a test:
nothing here asserts a speed.

    medwb overhead --variants pytorch:fp32,llama.cpp:q4_0 --cases 8
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from medwb.errors import MedwbError
from medwb.sysinfo import default_threads


def _records(n: int) -> list[dict]:
    from medwb.tasks import corpus
    return [c.fields() for c in corpus.heldout_cases("standard")[:n]]


def direct(spec: dict) -> dict:
    """In the backend's env: load as a worker does, then fit and stream each record."""
    from medwb.apps import fitting
    from medwb.apps.workers import load_model
    backend, info = load_model(spec)
    workflow = fitting.fitter("diagnosis")
    runs = []
    for fields in [spec["records"][0]] + spec["records"]:  # the first: an untimed warm-up
        started = time.perf_counter()
        _, ids, _ = workflow.fit_prompt(fields, backend.encode, info["context"], spec["max_new_tokens"],
                                        spec["template"])
        res = backend.stream(ids, spec["max_new_tokens"], lambda chunk: False)
        runs.append({"total_ms": (time.perf_counter() - started) * 1e3, "ttft_ms": res["ttft_ms"],
                     "new_tokens": res["n_new_tokens"], "text": res["text"]})
    return {"runs": runs[1:], "load_s": info["load_s"]}


def via_worker(model: str, records: list[dict], template: str, max_new_tokens: int, threads: int,
               log_dir: Path) -> dict:
    from medwb.apps import workers
    spec = workers.parse_model(model, 0)
    worker = workers.ModelWorker(spec, threads=threads, log_dir=log_dir)
    worker.start()
    try:
        if not worker.wait_ready(900):
            raise MedwbError(f"{model}: the worker did not become ready: {worker.error}")
        runs = []
        for i, fields in enumerate([records[0]] + records):  # the first: an untimed warm-up
            done, result = threading.Event(), {}

            def on_event(kind, msg, result=result, done=done):
                if kind == "done":
                    result.update(msg)
                    done.set()
            started = time.perf_counter()
            worker.submit(i + 1, fields, template, max_new_tokens, on_event)
            if not done.wait(900) or result.get("status") != "ok":
                raise MedwbError(f"{model}: record {i} did not finish: {result.get('error')}")
            runs.append({"total_ms": (time.perf_counter() - started) * 1e3, "ttft_ms": result.get("ttft_ms"),
                         "new_tokens": result.get("new_tokens"), "text": result.get("text")})
        return {"runs": runs[1:], "model_path": worker.info.get("model_path")}
    finally:
        worker.stop()


def measure(models: list[str], n_records: int = 8, max_new_tokens: int = 200, threads: int = 0,
            log=print) -> list[dict]:
    """One record per model: both paths on the same records, in this order: direct, worker."""
    from medwb import child, envs, sysinfo
    from medwb.apps import workers
    from medwb.backends import registry
    from medwb.tasks import prompts
    records, template = _records(n_records), prompts.DIAGNOSIS_PROMPT
    threads = threads or default_threads()
    out = []
    for model in models:
        spec = workers.parse_model(model, 0)
        entry = registry.get(spec["backend"])
        load = sysinfo.check_load(log=log)
        with tempfile.TemporaryDirectory(prefix="medwb-overhead-") as tmp:
            try:
                job = {**workers.load_spec(spec, workers.resolve_artifact(spec), threads),
                       "records": records, "template": template, "max_new_tokens": max_new_tokens}
                spec_file = Path(tmp) / "spec.json"
                spec_file.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
                d = child.run([str(envs.require(entry.env)), "-m", __name__, str(spec_file)], timeout=1800,
                              env=workers.thread_env(threads, job), what=f"{model} direct")
                w = via_worker(model, records, template, max_new_tokens, threads, Path(tmp))
            except MedwbError as e:
                out.append({"record_type": "overhead", "model": model, "error": str(e), "machine_load": load})
                continue
        direct_ms = sum(r["total_ms"] for r in d["runs"])
        worker_ms = sum(r["total_ms"] for r in w["runs"])
        tokens = sum(r["new_tokens"] for r in d["runs"])
        out.append({"record_type": "overhead", "model": model, "records": len(records), "threads": threads,
                    "new_tokens": tokens, "direct_ms": round(direct_ms, 1), "worker_ms": round(worker_ms, 1),
                    "direct_ms_per_token": round(direct_ms / tokens, 4),
                    "worker_ms_per_token": round(worker_ms / tokens, 4),
                    "overhead_pct": round(100 * (worker_ms - direct_ms) / direct_ms, 1),
                    "direct_ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in d["runs"]), 2),
                    "worker_ttft_ms_median": round(statistics.median(r["ttft_ms"] for r in w["runs"]), 2),
                    "same_text": [a["text"] == b["text"] for a, b in zip(d["runs"], w["runs"])],
                    "cpu": sysinfo.cpu().get("model"), "machine_load": load})
    return out


if __name__ == "__main__":
    from medwb.child import write_result
    with open(sys.argv[1], encoding="utf-8") as f:
        write_result(direct(json.load(f)))
