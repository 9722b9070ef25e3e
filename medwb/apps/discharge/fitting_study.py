"""Does keeping the key days beat plain truncation? Measured on the held-out long records.

Each held-out record with a long stay (the varied set's multi-day renderings) is given a
context that holds only ``budget_ratio`` of its prompt plus the draft budget, so it must be
shortened. Every fitting method writes its prompt, the same model drafts greedily from each,
and the drafts are scored against the reference discharge record: character ROUGE-L F1 of
the whole record and of 诊疗经过 and 出院医嘱 (what shortening can lose), five non-empty
sections, grounding flags per draft; and, on the prompts themselves, whether the admission
diagnosis, the procedure notes, the last day, the last ward round and the orders survived.
One run, one model, one machine: the methods are compared within the same run, with a
paired bootstrap interval (records resampled) for each method's difference from the first.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from medwb.apps.discharge import record
from medwb.errors import MedwbError
from medwb.tasks import workflow
from medwb.quality.rouge import rouge_l_chars
from medwb.tasks import corpus


def long_records(limit: int | None = None) -> list[dict]:
    """The held-out long-stay records, with their reference records."""
    rows = [r for r in corpus.load_records("discharge", heldout_set="varied") if "long" in r["case"]["style"]]
    return rows[:limit] if limit else rows


def kept_parts(prompt: str, fields: dict) -> dict:
    """Which of the parts that matter most survived in ``prompt``."""
    notes = record.split_notes(fields["course_notes"])
    procedures = [n for n in notes if record.PROCEDURE.search(record._NOTE.sub("", n, count=1))]
    return {"admission_diagnosis": f"入院诊断：{fields['disease']}" in prompt,
            "procedures": all(n in prompt for n in procedures),
            "last_day": bool(notes) and notes[-1] in prompt,
            "last_ward_round": fields["discharge_condition"] in prompt,
            "orders": fields["orders_brief"] in prompt}


def measure(model_dir, methods=record.FIT_METHODS, budget_ratio: float = 0.6, max_new_tokens: int = 400,
            limit: int | None = None, threads: int | None = None, log=print) -> dict:
    """Drafts from every method's prompt on the held-out long records; per-method scores.
    ``model_dir``: a checkpoint folder, or "demo" for the demo model (run in FP32)."""
    from medwb.backends.pytorch import PyTorchBackend
    from medwb.backends import variants
    from medwb import sysinfo
    model = str(model_dir)
    model_dir = variants.resolve_model(model)
    backend = PyTorchBackend.load(model_dir, threads=threads)
    rows = long_records(limit)
    cases = []
    for r in rows:
        fields = record.check_record(record.record_text(r["case"]["case_id"]))
        n_full = len(backend.encode(record.render(fields)))
        context = math.ceil(n_full * budget_ratio) + max_new_tokens
        cases.append({"id": r["case"]["case_id"], "fields": fields, "target": r["target"], "context": context,
                      "tokens": n_full})
    per_record: dict[str, dict[str, list[float]]] = {}
    result = {"model": "the demo model" if model in ("", "demo") else model, "model_dir": str(model_dir), "records": len(cases), "budget_ratio": budget_ratio,
              "max_new_tokens": max_new_tokens, "cpu": sysinfo.cpu()["model"], "methods": {}}
    # A record a method cannot fit (its protected parts alone overrun the context) is refused
    # by the app with a message; it is counted, and every method is scored on the records
    # all methods fit.
    fitted = {}
    for method in methods:
        fitted[method] = []
        for c in cases:
            try:
                fitted[method].append(record.fit_prompt(c["fields"], backend.encode, c["context"], max_new_tokens,
                                                        method=method)[0])
            except MedwbError:
                fitted[method].append(None)
    common = [i for i in range(len(cases)) if all(fitted[m][i] is not None for m in methods)]
    result["refused"] = {m: sum(p is None for p in fitted[m]) for m in methods}
    result["scored_records"] = len(common)
    cases = [cases[i] for i in common]
    for method in methods:
        started = time.perf_counter()
        prompts = [fitted[method][i] for i in common]
        drafts = backend.generate(prompts, max_new_tokens)
        targets = [c["target"] for c in cases]
        parsed = [workflow.parse_sections(d) for d in drafts]
        ref = [workflow.parse_sections(t) for t in targets]
        kept = [kept_parts(p, c["fields"]) for p, c in zip(prompts, cases)]
        flags = [record.analyse(d, c["fields"])["flags"] for d, c in zip(drafts, cases)]
        result["methods"][method] = {
            "rouge_l": rouge_l_chars(drafts, targets),
            **{f"rouge_l_{s}": rouge_l_chars([p[s] or "" for p in parsed], [r[s] or "" for r in ref])
               for s in ("诊疗经过", "出院医嘱")},
            "five_nonempty_rate": round(workflow.rate(all(p.values()) for p in parsed), 4),
            "flags_per_draft": round(sum(map(len, flags)) / max(1, len(flags)), 2),
            **{f"kept_{k}": round(workflow.rate(x[k] for x in kept), 4) for k in kept[0]},
            "seconds": round(time.perf_counter() - started, 1)}
        per_record[method] = {
            "rouge_l": [rouge_l_chars([d], [t]) for d, t in zip(drafts, targets)],
            "rouge_l_诊疗经过": [rouge_l_chars([p["诊疗经过"] or ""], [r["诊疗经过"] or ""]) for p, r in zip(parsed, ref)]}
        log(f"{method}: {result['methods'][method]}")
    first = methods[0]
    for method in methods[1:]:
        for key, mine in per_record[first].items():
            low, high, diff = paired_interval(mine, per_record[method][key])
            result["methods"][method][f"{key}_diff_vs_{first}"] = f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"
    return result


def paired_interval(a: list[float], b: list[float], resamples: int = 2000, seed: int = 0):
    """95% interval of mean(b - a) over records resampled with replacement, and the mean."""
    import numpy as np
    d = np.asarray(b) - np.asarray(a)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(resamples, len(d)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high), float(d.mean())


def write(result: dict, out_dir) -> Path:
    """fitting_study.json and a Markdown table in ``out_dir`` (written whole, then renamed)."""
    from medwb.paths import write_text_atomic
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "fitting_study.json", json.dumps(result, ensure_ascii=False, indent=1))
    methods = result["methods"]
    keys = list(next(iter(methods.values())))
    lines = [f"Held-out long records: {result['records']} ({result['scored_records']} scored: the ones every method "
             f"fits; refused: {result['refused']}), context = {result['budget_ratio']:.0%} of each prompt "
             f"+ {result['max_new_tokens']} draft tokens; greedy FP32, {result['model']}; {result['cpu']}", "",
             "| measure | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    keys += [k for m in methods.values() for k in m if k not in keys]
    lines += [f"| {k} | " + " | ".join(str(m.get(k, "")) for m in methods.values()) + " |" for k in keys]
    write_text_atomic(out / "fitting_study.md", "\n".join(lines) + "\n")
    return out / "fitting_study.md"
