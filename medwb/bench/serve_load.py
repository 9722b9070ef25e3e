"""Load on the OpenAI-compatible endpoint (``medwb serve-load``), as users measure servers.

Open-loop arrivals, the way vLLM's serving benchmark drives a server: at each request rate
(requests per second), ``requests`` requests are sent at exponentially distributed intervals
(seeded), whatever the server's state, each one streamed, with the held-out clinical prompts
(the bundled diagnosis cases, through /v1/chat/completions). Per request: time to first
token, time per output token after it, end to end, tokens, status (429s counted apart: the
admission control's answer, not a failure). Per rate: p50/p90/p99 of each, throughput, the
429 share, and where queueing starts (first-token time growing past twice the lowest rate's).
Records in ``<run>/records/serve_load.jsonl``, a plot and a summary table.
"""
from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

from medwb.errors import MedwbError, check_count
from medwb.paths import write_text_atomic


def prompts(n: int) -> list[str]:
    """Held-out diagnosis cases as a doctor's question (the bundled set, in order, repeated)."""
    from medwb.apps.diagnosis import record
    cases = list(record.bundled_cases().values())
    if not cases:
        raise MedwbError("no bundled held-out cases to send: data/heldout is missing")
    from medwb.tasks import prompts as tp
    return [tp.DIAGNOSIS_PROMPT.format(**{k: c.get(k) or "无" for k, _ in record.FIELDS}) for c in
            (cases[i % len(cases)] for i in range(n))]


def one(base: str, token: str, model: str, prompt: str, max_tokens: int) -> dict:
    """One streamed request, timed from the client."""
    import httpx
    started = time.perf_counter()
    first, n, status, error = None, 0, None, None
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", timeout=600,
                          headers={"Authorization": f"Bearer {token}"},
                          json={"model": model, "messages": [{"role": "user", "content": prompt}],
                                "max_tokens": max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}}) as r:
            status = r.status_code
            if status != 200:
                r.read()
                error = r.json().get("error", {}).get("message") if r.headers.get("content-type", "").startswith(
                    "application/json") else r.text[:200]
            else:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    delta = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                    if delta:
                        first = first or time.perf_counter()
                        n += 1
    except Exception as e:  # noqa: BLE001  (a failed request is a record, not the end of the run)
        error = f"{type(e).__name__}: {e}"
    end = time.perf_counter()
    ttft = (first - started) * 1e3 if first else None
    return {"status": status, "error": error, "ttft_ms": round(ttft, 1) if ttft else None,
            "e2e_ms": round((end - started) * 1e3, 1), "chunks": n,
            "tpot_ms": round((end - first) * 1e3 / (n - 1), 2) if first and n > 1 else None}


def _request(rows: list, lock, rate: float, i: int, base: str, token: str, model: str, text: str,
             max_tokens: int) -> None:
    rec = {"record_type": "serve_load", "rate_rps": rate, "request": i, "model": model,
           **one(base, token, model, text, max_tokens)}
    with lock:
        rows.append(rec)


def _pct(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    return round(values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))], 1)


def summarize(rate: float, rows: list[dict], wall_s: float) -> dict:
    ok = [r for r in rows if r["status"] == 200 and not r["error"]]
    out = {"record_type": "serve_load_summary", "rate_rps": rate, "requests": len(rows), "ok": len(ok),
           "rejected_429": sum(r["status"] == 429 for r in rows),
           "failed": sum(r["status"] not in (200, 429) or (r["status"] == 200 and bool(r["error"])) for r in rows),
           "throughput_rps": round(len(ok) / wall_s, 3), "output_chunks_per_s": round(sum(r["chunks"] for r in ok) / wall_s, 2)}
    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        for q in (50, 90, 99):
            out[f"{key.removesuffix('_ms')}_p{q}_ms"] = _pct([r[key] for r in ok], q)
    return out


def run(base: str, token: str, model: str, rates: list[float], requests: int, max_tokens: int, run_dir=None,
        seed: int = 0, log=print) -> Path:
    """Every rate in turn; records and the summary written after each into ``run_dir`` (a new
    runs/<timestamp> when empty, made only once every argument checked out); returns it."""
    import httpx
    for r in rates:
        if not isinstance(r, (int, float)) or r <= 0:
            raise MedwbError(f"--rates: {r!r} is not a positive number of requests per second")
    check_count("--requests", requests, 1, "requests per rate")
    check_count("--max-tokens", max_tokens, 1, "tokens per answer")
    try:
        models = httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    except httpx.HTTPError as e:
        raise MedwbError(f"--url {base}: no endpoint answers ({type(e).__name__}); start one with `medwb serve`") from None
    if models.status_code != 200:
        raise MedwbError(f"--url {base}: /v1/models answered {models.status_code}: check --token-file")
    names = [m["id"] for m in models.json()["data"]]
    model = model or names[0]
    if model not in names:
        raise MedwbError(f"--model {model!r}: the endpoint serves {', '.join(names)}")
    from medwb import runner
    run_dir = Path(run_dir) if run_dir else runner.new_run_dir()
    (run_dir / "records").mkdir(parents=True, exist_ok=True)
    texts = prompts(requests)
    rng = random.Random(seed)
    records: list[dict] = []
    for rate in rates:
        rows: list[dict] = []
        lock = threading.Lock()
        threads = []
        started = time.perf_counter()
        for i, text in enumerate(texts):
            t = threading.Thread(target=_request, args=(rows, lock, rate, i, base, token, model, text, max_tokens),
                                 daemon=True)
            t.start()
            threads.append(t)
            time.sleep(rng.expovariate(rate))
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        summary = summarize(rate, rows, wall)
        log(f"{rate:g} req/s: {summary['ok']} ok, {summary['rejected_429']} refused (429), {summary['failed']} failed; "
            f"first token p50/p90 {summary['ttft_p50_ms']}/{summary['ttft_p90_ms']} ms; end to end p50/p90 "
            f"{summary['e2e_p50_ms']}/{summary['e2e_p90_ms']} ms; {summary['throughput_rps']} answers/s")
        records += sorted(rows, key=lambda r: r["request"]) + [summary]
        write_text_atomic(run_dir / "records" / "serve_load.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    summaries = [r for r in records if r["record_type"] == "serve_load_summary"]
    base_ttft = summaries[0]["ttft_p50_ms"] or 0
    for s in summaries:  # where queueing starts: first-token time past twice the lowest rate's
        s["queueing"] = bool(base_ttft and s["ttft_p50_ms"] and s["ttft_p50_ms"] > 2 * base_ttft)
    write_text_atomic(run_dir / "records" / "serve_load.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    plot(summaries, run_dir / "serve_load.png", model)
    return run_dir


def plot(summaries: list[dict], path: Path, model: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rates = [s["rate_rps"] for s in summaries]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, style in (("ttft", "o-"), ("e2e", "s-")):
        for q, alpha in ((50, 1.0), (90, 0.5)):
            a.plot(rates, [s[f"{key}_p{q}_ms"] for s in summaries], style, alpha=alpha, label=f"{key} p{q}")
    a.set_xlabel("request rate (req/s)")
    a.set_ylabel("ms")
    a.set_yscale("log")
    a.legend(fontsize=8)
    a.set_title(f"latency: {model}")
    b.plot(rates, [s["throughput_rps"] for s in summaries], "o-", label="answers/s")
    b.plot(rates, [s["rejected_429"] / max(1, s["requests"]) for s in summaries], "x--", label="share refused (429)")
    b.set_xlabel("request rate (req/s)")
    b.legend(fontsize=8)
    b.set_title("throughput and admission control")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
