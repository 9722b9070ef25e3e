"""The accuracy guard: does a variant keep FP32's accuracy, task by task, beyond noise?

Per variant and task: the official main metric, its 95% bootstrap interval (samples
resampled with replacement, the metric recomputed on each resample: the metrics are
corpus-level, F1 over pooled counts, so a mean of per-sample scores would be wrong), the
*paired* difference to the reference (FP32) with its interval (the same resampled samples
for both, which removes the samples' own difficulty from the noise), the share of the
reference's score kept, and the parse-failure rate. Overall: the mean of the task
metrics x 100 (PromptCBLUE's overall), resampled per task.

The decision per variant is a non-inferiority test, not a point ratio: with a dozen samples
per task a point ratio fails almost every variant somewhere by chance. The variant *keeps*
FP32's accuracy when the lower end of the 95% interval of its paired overall difference lies
above -margin (the margin: ``MARGIN`` of FP32's overall score); it *loses* accuracy when the
whole interval lies below -margin, overall or on one task (that task's own margin); and when
the interval spans -margin the outcome is "not enough samples to decide", its own answer,
with how to get more evidence; so is any run with fewer than ``MIN_SAMPLES`` samples on a task,
whatever its interval says. Per task the difference and its interval are shown.

Speed: ROUGE-L is computed once per sample (its pairs' F values), pooled micro-F1 and the
classification F1s from per-sample counts, so all resamples of a task are array
arithmetic at once.
"""
from __future__ import annotations

import numpy as np

from medwb.eval import scoring

# Non-inferiority margin: the share of FP32's score a variant may lose (as a 5% relative loss
# is the usual "accuracy kept" bar of quantization reports, e.g. Intel Neural Compressor's 1%
# is stricter, NNCF's similarity gate looser); configs/decision.yaml overrides it.
MARGIN = 0.05
# Fewer samples than this on any task decide nothing: a percentile bootstrap of a handful of
# samples has few distinct resamples and its interval is far narrower than the truth (one
# sample per task gives a zero-width interval: "keeps" on one answer, seen in a 1-sample run).
MIN_SAMPLES = 10
# Decisions, as the recommendation reads them (summary.json's "decision").
KEEPS, LOSES, UNDECIDED, REFERENCE = "keeps", "loses", "undecided", "reference"


def _bootstrap(spec, stats: list, draws: np.ndarray) -> np.ndarray:
    """The task metric on every resample at once (``draws``: resamples x n sample indices)."""
    if spec.metric == "rouge_l":
        # Pooled mean over (sample, section) pairs = sum of pair F / number of pairs.
        means = [scoring.aggregate(spec, [s])["score"] or 0.0 for s in stats]
        counts = np.array([len(s) for s in stats], dtype=float)
        sums, pairs = (np.array(means) * counts)[draws].sum(axis=1), counts[draws].sum(axis=1)
        return np.divide(sums, pairs, out=np.zeros_like(sums), where=pairs > 0)
    if spec.metric == "micro_f1":
        tp, fp, fn = (np.array([s[k] for s in stats], dtype=float)[draws].sum(axis=1) for k in range(3))
        # official rule: no true positive -> 0; else 2PR/(P+R) = 2TP/(2TP+FP+FN)
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=tp > 0)
    if spec.metric in ("macro_f1", "weighted_f1"):
        return _label_bootstrap(stats, draws, weighted=spec.metric == "weighted_f1")
    return np.array([scoring.aggregate(spec, [stats[i] for i in idx])["score"] or 0.0 for idx in draws])


def _label_bootstrap(stats: list, draws: np.ndarray, weighted: bool) -> np.ndarray:
    """Macro or support-weighted F1 of every resample, as the official scorer's sklearn
    ``classification_report`` defines them (labels = gold and predicted labels present in
    that resample; per label F1 = 2TP / (2TP + FP + FN), 0 when it has no true positive),
    from per-resample label counts. Calling sklearn once per resample took most of an
    evaluation's scoring time (~10 ms x 1000 resamples x task x variant); the point score
    still comes from sklearn, and a test checks this against it on random resamples."""
    codes: dict = {}
    gold = np.array([codes.setdefault(g, len(codes)) for g, _ in stats])
    pred = np.array([codes.setdefault(p, len(codes)) for _, p in stats])
    k, (resamples, _) = len(codes), draws.shape
    row = np.arange(resamples)[:, None] * (k + 1)  # one block of k+1 counters per resample

    def count(labels):  # labels == k counts nowhere (the spare counter)
        return np.bincount((row + labels[draws]).ravel(), minlength=resamples * (k + 1)).reshape(
            resamples, k + 1)[:, :k].astype(float)

    true, predicted = count(gold), count(pred)
    tp = count(np.where(gold == pred, gold, k))
    seen = true + predicted  # = 2TP + FP + FN per label; > 0 exactly for the labels present
    f1 = np.divide(2 * tp, seen, out=np.zeros_like(tp), where=seen > 0)
    if weighted:
        return (f1 * true).sum(axis=1) / true.sum(axis=1)
    return f1.sum(axis=1) / (seen > 0).sum(axis=1)


def _interval(values: np.ndarray, point: float) -> tuple[float, float]:
    """The 95% percentile interval, widened to hold ``point`` where it does not: a skewed
    bootstrap (or float rounding, as with perfect answers) can leave the pooled score just
    outside it, and an interval that excludes its own estimate is no interval to report."""
    lo, hi = np.percentile(values, [2.5, 97.5])
    return min(float(lo), point), max(float(hi), point)


def evaluate(rows: dict[str, list[dict]], specs: dict, reference: str | None, errors: dict | None = None,
             resamples: int = 1000, seed: int = 0, margin: float = MARGIN):
    """(scores DataFrame, verdicts {variant: text}) from per-sample rows (``_stats`` per
    answered sample, as ``medwb.eval.run.score_run`` makes them)."""
    import pandas as pd

    errors = errors or {}
    tasks = list(specs)
    # One index matrix per task, shared by every variant: paired differences.
    draws = {}
    for t in tasks:
        n = sum(r["task"] == t for r in next(iter(rows.values())))
        draws[t] = np.random.default_rng([seed, tasks.index(t)]).integers(0, n, size=(resamples, n))
    boot: dict[tuple[str, str], np.ndarray] = {}
    records = []
    for variant, rs in rows.items():
        for t in tasks:
            spec = specs[t]
            mine = [r for r in rs if r["task"] == t]
            answered = [r for r in mine if r["answered"]]
            rec = {"variant": variant, "task": t, "metric": spec.metric, "n": len(mine),
                   "answered": len(answered), "complete": len(answered) == len(mine)}
            if answered and rec["complete"]:
                stats = [r["_stats"] for r in mine]
                rec["score"] = scoring.aggregate(spec, stats)["score"]
                boot[variant, t] = _bootstrap(spec, stats, draws[t])
                rec["ci_low"], rec["ci_high"] = _interval(boot[variant, t], rec["score"])
                rec["parse_failure_rate"] = sum(bool(r["parse_failed"]) for r in answered) / len(answered)
            records.append(rec)
    scores = pd.DataFrame.from_records(records)
    for col in ("score", "ci_low", "ci_high", "parse_failure_rate"):
        if col not in scores:
            scores[col] = np.nan
    # Paired differences and kept share against the reference.
    for i, rec in scores.iterrows():
        key, ref_key = (rec["variant"], rec["task"]), (reference, rec["task"])
        if reference is None or rec["variant"] == reference or key not in boot or ref_key not in boot:
            continue
        ref_score = scores[(scores.variant == reference) & (scores.task == rec["task"])]["score"].iloc[0]
        diff = boot[key] - boot[ref_key]
        scores.loc[i, "diff"] = rec["score"] - ref_score
        scores.loc[i, "diff_low"], scores.loc[i, "diff_high"] = _interval(diff, rec["score"] - ref_score)
        scores.loc[i, "kept"] = rec["score"] / ref_score if ref_score else np.nan
    scores = pd.concat([scores, _overall(scores, boot, tasks, reference)], ignore_index=True)
    return scores, verdicts(scores, reference, errors, margin)


def _overall(scores, boot, tasks, reference):
    """Per variant: PromptCBLUE's overall (mean of the task metrics x 100) with its interval."""
    import pandas as pd
    rows = []
    for variant in scores.variant.unique():
        if not all((variant, t) in boot for t in tasks):
            rows.append({"variant": variant, "task": "overall", "metric": "mean x 100", "complete": False})
            continue
        per_b = 100 * np.mean([boot[variant, t] for t in tasks], axis=0)
        mine = scores[(scores.variant == variant) & (scores.task.isin(tasks))]
        rec = {"variant": variant, "task": "overall", "metric": "mean x 100", "complete": True,
               "n": int(mine.n.sum()), "answered": int(mine.answered.sum()),
               "score": 100 * float(mine.score.mean()), "parse_failure_rate": float(mine.parse_failure_rate.mean())}
        rec["ci_low"], rec["ci_high"] = _interval(per_b, rec["score"])
        if reference and variant != reference and all((reference, t) in boot for t in tasks):
            ref_b = 100 * np.mean([boot[reference, t] for t in tasks], axis=0)
            ref_score = 100 * float(scores[(scores.variant == reference) & (scores.task.isin(tasks))].score.mean())
            rec["diff"] = rec["score"] - ref_score
            rec["diff_low"], rec["diff_high"] = _interval(per_b - ref_b, rec["diff"])
            rec["kept"] = rec["score"] / ref_score if ref_score else np.nan
        rows.append(rec)
    return pd.DataFrame.from_records(rows)


def decision(verdict: str) -> str | None:
    """The outcome a verdict text states: keeps, loses, undecided, reference, or None
    (incomplete, or nothing to compare with)."""
    for outcome, start in ((KEEPS, "keeps"), (LOSES, "loses"), (UNDECIDED, "not enough samples"),
                           (REFERENCE, "reference")):
        if verdict.startswith(start):
            return outcome
    return None


def verdicts(scores, reference: str | None, errors: dict, margin: float = MARGIN) -> dict[str, str]:
    """Per variant, one sentence that starts with its decision (see ``decision``) and gives
    the paired difference, its interval and the margin it was tested against."""
    out = {}
    tasks = scores[scores.task != "overall"]
    overall = scores[scores.task == "overall"].set_index("variant")
    for variant, mine in tasks.groupby("variant", sort=False):
        if variant in errors:
            out[variant] = f"incomplete: {errors[variant]}"
        elif not mine.complete.all():
            out[variant] = "incomplete: some samples have no answer (run again to resume)"
        elif variant == reference:
            out[variant] = "reference (FP32)"
        elif reference is None or "diff_low" not in mine or mine.diff_low.isna().all():
            out[variant] = ("no reference to compare with (add the FP32 reference to the variants: pytorch:fp32, or "
                            "llama.cpp:f32 for a folder that runs its own code, as `medwb doctor --model` says)")
        else:
            out[variant] = _verdict(overall.loc[variant], mine, margin)
    return out


def not_judged(verdicts: dict[str, str], why: str) -> dict[str, str]:
    """The verdicts of a model whose answers mean nothing (random weights, speed only):
    every comparison becomes 'not judged: ``why``' (no decision); the reference and the
    incomplete keep theirs. Noise decides a random model's task scores, so a 'keeps' or
    'loses' there would be chance dressed as a finding."""
    return {v: t if decision(t) == REFERENCE or t.startswith("incomplete") else f"not judged: {why}"
            for v, t in verdicts.items()}


def _verdict(o, tasks, margin: float) -> str:
    score, diff, low, high = (float(o[k]) for k in ("score", "diff", "diff_low", "diff_high"))
    ref_score = score - diff
    allowed = margin * ref_score  # in overall points (x 100)
    lost = [r for r in tasks.itertuples()
            if r.diff_high < -margin * (r.score - r.diff)]  # the whole interval below the task's margin
    figures = (f"overall {diff:+.1f} points vs FP32, 95% interval [{low:+.1f}, {high:+.1f}], "
               f"margin -{allowed:.1f} ({margin:.0%} of FP32's {ref_score:.1f})")
    few = tasks[tasks.n < MIN_SAMPLES]
    if len(few):
        return (f"not enough samples to decide: {figures}; only {int(few.n.min())} samples on "
                f"{few.sort_values('n').task.iloc[0]}, and an interval from fewer than {MIN_SAMPLES} per task "
                "means nothing, so evaluate more samples (limit 0: all of them) or read the fidelity to FP32")
    if high < -allowed or lost:
        where = "" if not lost else "; beyond the margin on " + ", ".join(
            f"{r.task} ({100 * r.diff:+.1f} [{100 * r.diff_low:+.1f}, {100 * r.diff_high:+.1f}])" for r in lost)
        return f"loses accuracy: {figures}{where}"
    if low > -allowed:
        return f"keeps FP32's accuracy (non-inferior): {figures}"
    return (f"not enough samples to decide: {figures}; the interval spans the margin, so evaluate more "
            "samples (limit 0: all of them) or read the fidelity to FP32")
