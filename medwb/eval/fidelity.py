"""Fidelity to FP32, token by token (``medwb fidelity``, notebook 03's fidelity section).

The field's evidence that a quantized model is still the model (llama.cpp's
``llama-perplexity --kl-divergence``): the same token ids are fed to the reference (PyTorch
FP32) and to the variant (teacher forcing), and their next-token distributions are compared
at every position of the second half of each context window (the first half gives each
scored position some context). Per token: KL(reference || variant) over the whole
vocabulary, whether the most likely token is the same ("same top"), Δp, the change in the
probability of the token that actually follows, and both negative log-likelihoods.
Per variant: mean KLD with its standard error and percentiles, same-top rate with its
binomial (Wilson) interval, RMS Δp, and the perplexity ratio with an interval from the
*paired* per-token differences of log-likelihood. No statistics from fewer than 100 tokens.

Every route that gives logits is measured in its own environment (``sequence_logits``); a
route whose runtime gives none is measured through the backend that loads the same artifact
(``logits_via``: openvino-genai's IR through optimum), or recorded as not measurable with
the reason (llm-cli). The ids are the reference tokenizer's; each route's own tokenizer
must encode the texts to the same ids, else the route is refused with the first differing
position (a vocabulary mismatch is an error, never a warning).

Results are cached per (model files, text set, windows, variant) in the medwb cache and
copied into the run folder (``<run>/fidelity/``: per-token rows and summary.json); a cache
entry is written only whole (temp file, then rename), so a cut run redoes one variant.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from medwb.errors import MedwbError
from medwb.sysinfo import default_threads

CONTEXT = 512      # tokens per window (llama.cpp's default for --kl-divergence)
WINDOWS = 8        # windows scored: 8 x 256 = 2,048 tokens
MIN_TOKENS = 100   # fewer scored tokens give no statistics (llama.cpp's rule too)
# Part of the cache key: bump it when a change alters what a route's logits or the per-token
# figures are for the same ids, so results of the old code are never reused.
VERSION = 1
Z95 = 1.959964


# ---------------------------------------------------------------- texts and windows
def bundled_texts() -> list[str]:
    """The held-out clinical texts the workbench ships: each held-out case's diagnosis and
    discharge prompt followed by its reference answer, in the chat format the apps use."""
    from medwb.tasks import corpus, prompts
    out = []
    for case in corpus.heldout_cases("standard"):
        for task in corpus.TASKS:
            record = corpus.to_record(case, task)
            chat = [{"role": "user", "content": record["input"]}, {"role": "assistant", "content": record["target"]}]
            out.append(prompts.render_chat(chat))
    return out


def read_texts(path) -> list[str]:
    """A user's own texts: a .txt file (blank-line separated) or a .jsonl file of objects with
    "text" (or PromptCBLUE's "input" and "target", joined)."""
    path = Path(path)
    if not path.is_file():
        raise MedwbError(f"--texts '{path}' is not a file: give a .txt (texts separated by blank lines) "
                         "or .jsonl file (one {\"text\": ...} per line)")
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".jsonl":
        texts = []
        for i, line in enumerate(filter(str.strip, raw.splitlines()), 1):
            try:
                obj = json.loads(line)
            except ValueError:
                raise MedwbError(f"--texts '{path}' line {i} is not JSON: one object per line") from None
            text = obj.get("text") if isinstance(obj, dict) else None
            if text is None and isinstance(obj, dict) and "input" in obj:
                text = f"{obj['input']}\n{obj.get('target', '')}"
            if not isinstance(text, str):
                raise MedwbError(f"--texts '{path}' line {i} has no \"text\" (or \"input\"): give one per line")
            texts.append(text)
    else:
        texts = [t.strip() for t in raw.split("\n\n") if t.strip()]
    if not texts:
        raise MedwbError(f"--texts '{path}' holds no text")
    return texts


def windows(docs: list[list[int]], context: int, count: int) -> list[list[int]]:
    """``count`` windows of ``context`` ids cut from the documents' ids laid end to end."""
    stream = [t for d in docs for t in d]
    out = [stream[i:i + context] for i in range(0, len(stream) - context + 1, context)][:count]
    if not out:
        raise MedwbError(f"the texts hold {len(stream)} tokens, fewer than one window of {context}: "
                         "give longer texts or a smaller --context")
    return out


def scored(context: int) -> range:
    """Positions whose next-token distribution is compared: the second half of a window."""
    return range(context // 2 - 1, context - 1)


# ---------------------------------------------------------------- per-token comparison (child side)
def log_softmax(logits):
    import numpy as np
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def compare(ref_logp, var_logits, targets) -> list[dict]:
    """Per scored position: KL(ref || var), same top, Δp and both NLLs of the actual next token."""
    import numpy as np
    ref = np.asarray(ref_logp, dtype=np.float64)
    var = log_softmax(var_logits)
    if var.shape != ref.shape:
        raise MedwbError(f"the variant's logits have shape {var.shape}, the reference's {ref.shape}: its "
                         "vocabulary differs from the reference's, so its distributions cannot be compared")
    p = np.exp(ref)
    kld = (p * (ref - var)).sum(axis=1)
    rows_ = np.arange(len(targets))
    t = np.asarray(targets)
    same = ref.argmax(axis=1) == var.argmax(axis=1)
    return [{"kld": max(0.0, float(k)), "same_top": bool(s), "p_ref": float(pr), "p_var": float(pv),
             "nll_ref": float(-lr), "nll_var": float(-lv)}
            for k, s, pr, pv, lr, lv in zip(kld, same, np.exp(ref[rows_, t]), np.exp(var[rows_, t]),
                                            ref[rows_, t], var[rows_, t])]


def child(spec: dict) -> dict:
    """In the variant's environment: load it, check its tokenizer, compare every window."""
    import numpy as np

    from medwb import jsonl
    from medwb.backends.loader import load_in_child
    runtime = load_in_child(spec).runtime
    if not hasattr(runtime, "sequence_logits"):
        raise MedwbError(f"{spec['backend']} gives no logits at every position")
    probe = runtime.encode(spec["check_text"])
    if probe != spec["check_ids"]:
        at = next((i for i, (a, b) in enumerate(zip(probe, spec["check_ids"])) if a != b),
                  min(len(probe), len(spec["check_ids"])))
        raise MedwbError(f"this route tokenizes the texts differently from the reference: first difference at "
                         f"token {at} ({probe[at:at + 3]} vs {spec['check_ids'][at:at + 3]}), so the same ids "
                         "would not mean the same text: refused")
    ref = np.load(spec["reference"], mmap_mode="r")
    pos = scored(len(spec["windows"][0]))
    rows = []
    for w, ids in enumerate(spec["windows"]):
        logits = runtime.sequence_logits(ids)
        targets = [ids[i + 1] for i in pos]
        for i, row in zip(pos, compare(ref[w], logits[list(pos)], targets)):
            rows.append({"window": w, "position": i + 1, "token": ids[i + 1], **row})
    jsonl.write(spec["out"], rows)
    return {"tokens": len(rows)}


def reference_child(spec: dict) -> dict:
    """In the main environment: the reference's log-probabilities at the scored positions."""
    import numpy as np

    from medwb.backends.loader import load_in_child
    runtime = load_in_child(spec).runtime
    pos = list(scored(len(spec["windows"][0])))
    out = np.stack([log_softmax(runtime.sequence_logits(ids)[pos]).astype(np.float32) for ids in spec["windows"]])
    # This process's own temporary name: two runs may compute one cached reference at once.
    tmp = Path(spec["out"]).with_suffix(f".tmp-{os.getpid()}.npy")
    np.save(tmp, out)
    os.replace(tmp, spec["out"])
    return {"shape": list(out.shape)}


# ---------------------------------------------------------------- statistics
def summarize(rows: list[dict]) -> dict:
    """llama.cpp's figures, with intervals; ``None`` statistics under MIN_TOKENS tokens."""
    import numpy as np
    n = len(rows)
    if n < MIN_TOKENS:
        return {"tokens": n, "error": f"only {n} tokens scored: fewer than {MIN_TOKENS} give no statistics"}
    kld = np.array([r["kld"] for r in rows])
    same = np.array([r["same_top"] for r in rows], dtype=float)
    dp = np.array([r["p_var"] - r["p_ref"] for r in rows])
    ln_ratio = np.array([r["nll_var"] - r["nll_ref"] for r in rows])
    p = same.mean()
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    se_ln = ln_ratio.std(ddof=1) / math.sqrt(n)
    mean_ln = float(ln_ratio.mean())
    return {
        "tokens": n,
        "kld_mean": float(kld.mean()), "kld_se": float(kld.std(ddof=1) / math.sqrt(n)),
        "kld_upper": float(kld.mean() + Z95 * kld.std(ddof=1) / math.sqrt(n)),
        "kld_percentiles": {q: float(np.percentile(kld, float(q))) for q in ("50", "90", "99", "99.9")},
        "same_top": float(p), "same_top_se": float(math.sqrt(p * (1 - p) / max(1, n - 1))),
        "same_top_ci": [float(centre - half), float(centre + half)],
        "rms_dp": float(math.sqrt((dp ** 2).mean())),
        "ppl_ratio": math.exp(mean_ln), "ppl_ratio_ci": [math.exp(mean_ln - Z95 * se_ln), math.exp(mean_ln + Z95 * se_ln)],
        "ln_ppl_ratio": mean_ln, "ln_ppl_ratio_se": float(se_ln),
        "ppl_ref": math.exp(float(np.mean([r["nll_ref"] for r in rows]))),
    }


# ---------------------------------------------------------------- thresholds
def thresholds(decision: dict, bits: int | None) -> dict | None:
    """The fidelity bar for a variant of ``bits`` bits per weight (configs/decision.yaml)."""
    table = decision.get("fidelity", {})
    if bits is None:
        return None
    for limit in sorted(int(k) for k in table):
        if bits <= limit:
            return table[str(limit)] if str(limit) in table else table[limit]
    return table[str(max(int(k) for k in table))] if table else None


def verdict(summary: dict, bar: dict | None) -> tuple[str | None, str]:
    """("passes" | "fails" | None, why): passes when the KLD's upper 95% bound is within the bar
    and the same-top rate's lower bound above it; fails when the KLD's mean or the same-top
    rate itself misses the bar; otherwise not enough tokens to tell (None)."""
    if summary.get("error") or not bar:
        return None, summary.get("error") or "no fidelity bar for this many bits"
    kld, kld_hi, lo, top = summary["kld_mean"], summary["kld_upper"], summary["same_top_ci"][0], summary["same_top"]
    figures = (f"mean KLD {kld:.4f} (95% upper {kld_hi:.4f}; bar {bar['max_kld']}), same top {top:.1%} "
               f"(95% lower {lo:.1%}; bar {bar['min_same_top']:.0%}) over {summary['tokens']} tokens")
    if kld > bar["max_kld"] or top < bar["min_same_top"]:
        return "fails", figures
    if kld_hi <= bar["max_kld"] and lo >= bar["min_same_top"]:
        return "passes", figures
    return None, figures + ": within the bar, but its interval is not: score more tokens (--windows)"


def load_decision(path=None) -> dict:
    """The decision's thresholds: configs/decision.yaml, or ``path`` (same keys)."""
    from medwb.paths import REPO_DIR, read_settings_file
    path = Path(path) if path else REPO_DIR / "configs" / "decision.yaml"
    cfg = read_settings_file(path, "decision", "give a YAML file like configs/decision.yaml")
    margin = cfg.get("margin")
    if not isinstance(margin, (int, float)) or not 0 < margin < 1:
        raise MedwbError(f"decision '{path}': margin must be a share between 0 and 1, e.g. 0.05, got {margin!r}")
    for bits, bar in (cfg.get("fidelity") or {}).items():
        if not isinstance(bar, dict) or not {"max_kld", "min_same_top"} <= set(bar):
            raise MedwbError(f"decision '{path}': fidelity.{bits} needs max_kld and min_same_top")
    cfg["fidelity"] = {str(k): v for k, v in (cfg.get("fidelity") or {}).items()}
    return cfg


# ---------------------------------------------------------------- the driver
def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_child(function: str, spec: dict, env_name: str, extra_env: dict, timeout: float) -> None:
    from medwb import child, envs
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    try:
        child.run([str(envs.python_of(env_name)), "-m", "medwb.eval.fidelity", function, f.name], timeout=timeout,
                  what=f"fidelity {spec['backend']}", env={**os.environ, **extra_env})
    finally:
        os.unlink(f.name)


def run(model: str = "demo", variants: str | list = "", texts: str = "", context: int = 0, count: int = WINDOWS,
        threads: int = 0, run_dir=None, decision_file: str = "", log=print, timeout_s: float = 1800) -> dict:
    """Every variant's fidelity to FP32; writes ``<run_dir>/fidelity/`` and returns the summary
    ({variant: figures, verdict, source}) that the recommendation reads."""
    from medwb import child, jsonl
    from medwb.backends import registry
    from medwb.backends.variants import (DEFAULT_MATRIX, label, load_spec, parse_variants, prepare, resolve_model,
                                         routes_taking)
    from medwb.errors import check_count
    from medwb.eval.run import file_name
    from medwb.models import random_weights
    from medwb.paths import cache_dir, check_writable_dir, model_config, model_identity, write_json_atomic

    check_count("windows", count, 1, "windows of --context tokens to score")
    check_count("threads", threads, 0, "0: all cores")
    if context:
        check_count("context", context, 8, "tokens per window")
    chosen = parse_variants(variants) if isinstance(variants, str) and variants else \
        (list(variants) if variants else [v for v in DEFAULT_MATRIX])
    decision = load_decision(decision_file or None)
    if run_dir:
        check_writable_dir(run_dir, "--run-dir")
    docs_text = read_texts(texts) if texts else bundled_texts()
    model_dir = resolve_model(model)
    left_out: dict[str, str] = {}
    if not variants:  # the default matrix: the routes that take the model's family
        chosen, left_out = routes_taking(model_dir, chosen)
    speed_only = random_weights.is_speed_only(model_dir)
    threads = threads or default_threads()
    context = context or min(CONTEXT, int(model_config(model_dir).get("max_position_embeddings") or CONTEXT))
    if not run_dir:  # a run of its own (notebook 03 without a run folder too): never the working directory
        from medwb import provenance, runner
        run_dir = runner.new_run_dir()
        provenance.write(run_dir, {"fidelity": {"model": model, "texts": texts or "bundled", "context": context,
                                                "windows": count}}, kind="fidelity")
    out_dir = Path(run_dir) / "fidelity"
    from medwb.backends.pytorch import load_tokenizer
    tok = load_tokenizer(model_dir)
    docs = [list(tok(t)["input_ids"]) for t in docs_text]
    wins = windows(docs, context, count)
    fp = model_identity(model_dir, content=True)
    folder = cache_dir() / "fidelity" / fp / _key(wins, VERSION)
    folder.mkdir(parents=True, exist_ok=True)
    reference = folder / "reference.npy"
    ref_v = registry.reference_for(model_dir)
    arts = prepare(model_dir, [ref_v] + [v for v in chosen if not registry.is_reference(v, ref_v)], {"threads": threads,
                   "kernel_build": "match", "timeout_s": timeout_s, "artifacts_dir": ""}, log)
    base = {"windows": wins, "check_text": docs_text[0], "check_ids": docs[0]}
    if not reference.exists():
        log(f"fidelity: reference ({label(ref_v)}) on {len(wins)} windows of {context} tokens")
        _run_child("reference", {**load_spec(ref_v, arts[label(ref_v)], threads, None), **base,
                                 "out": str(reference)}, registry.get(ref_v["backend"]).env, {}, timeout_s)
    summary = {"model_fingerprint": fp, "texts": texts or "bundled held-out clinical texts", "context": context,
               "windows": len(wins), "windows_asked": count, "speed_only": speed_only, "scored_per_window": len(scored(context)),
               "reference": label(ref_v),
               "margin": decision["margin"],
               "variants": {name: {"verdict": None, "why": f"not run: {why}"} for name, why in left_out.items()}}
    out_dir.mkdir(parents=True, exist_ok=True)
    for v in chosen:
        name = label(v)
        entry = registry.get(v["backend"])
        bits = entry.weight_bits(v)
        via = registry.get(entry.logits_via) if entry.logits_via else entry
        if registry.is_reference(v, ref_v):
            summary["variants"][name] = {"verdict": "reference", "why": "the reference itself"}
            continue
        if not entry.logits_via and entry.no_logits_reason:
            summary["variants"][name] = {"verdict": None, "why": f"not measurable: {entry.no_logits_reason}",
                                         "bits": bits}
            continue
        art = arts[name]
        if art.get("error"):
            summary["variants"][name] = {"verdict": None, "why": f"no artifact: {art['error']}", "bits": bits}
            continue
        cached = folder / f"{file_name(name)}.jsonl"
        if not cached.exists():
            log(f"fidelity: {name}" + (f" (through {via.name}, the same artifact)" if via is not entry else ""))
            spec = {**load_spec({**v, "backend": via.name}, art, threads, "match"), **base,
                    "reference": str(reference), "out": str(cached)}
            try:
                _run_child("variant", spec, via.env, via.process_env(spec), timeout_s)
            except child.ChildError as e:
                summary["variants"][name] = {"verdict": None, "why": e.reason.removeprefix("failed: "), "bits": bits}
                log(f"fidelity: {name} failed: {summary['variants'][name]['why']}")
                continue
        rows = jsonl.read(cached)
        jsonl.write(out_dir / cached.name, rows)
        figures = summarize(rows)
        outcome, why = verdict(figures, thresholds(decision, bits))
        if speed_only:  # random weights: near-flat distributions, so the top token flips on noise
            outcome, why = None, f"not judged: {random_weights.SPEED_ONLY_WHY} ({why})"
        summary["variants"][name] = {**figures, "bits": bits, "verdict": outcome, "why": why,
                                     "measured_with": via.name, "rows": cached.name}
    write_json_atomic(out_dir / "summary.json", summary)
    # One record per variant beside the other records of the run (the per-token rows stay in fidelity/).
    jsonl.write(Path(run_dir) / "records" / "fidelity.jsonl", [
        {"record_type": "fidelity", "variant": name, "model_fingerprint": fp, "context": context,
         "windows": len(wins), **{k: x for k, x in s.items() if k != "rows"}}
        for name, s in summary["variants"].items()])
    return {**summary, "dir": out_dir}


def for_records(records: list[dict], model: str, run_dir, windows: int = 4, decision_file: str = "",
                log=print) -> dict | None:
    """Notebook 03: the fidelity of every variant the benchmark measured (4 windows: 1,024
    tokens), in ``run_dir``. A run folder that already holds it for the same variants, model
    and windows is read again, its verdicts judged anew against the thresholds given now
    (configs/decision.yaml, or ``decision_file``); anything else is measured."""
    from medwb.backends.variants import resolve_model
    from medwb.paths import model_identity
    labels = list(dict.fromkeys(r["variant"] for r in records
                                if r.get("record_type", "variant") == "variant" and not r.get("error")))
    have = latest(run_dir)
    if have and set(labels) <= set(have.get("variants", {})) and have.get("windows_asked") == windows \
            and have.get("model_fingerprint") == model_identity(resolve_model(model), content=True):
        return {**rejudge(have, load_decision(decision_file or None)), "source": f"this run ({run_dir})"}
    summary = run(model=model, variants=",".join(labels), count=windows, run_dir=run_dir,
                  decision_file=decision_file, log=log)
    return {**summary, "source": f"this run ({run_dir})"}


def rejudge(summary: dict, decision: dict) -> dict:
    """A fidelity summary's verdicts against ``decision``'s thresholds (the figures stay)."""
    variants = {}
    for name, s in summary.get("variants", {}).items():
        if ("kld_mean" in s or s.get("error")) and not summary.get("speed_only"):
            outcome, why = verdict(s, thresholds(decision, s.get("bits")))
            s = {**s, "verdict": outcome, "why": why}
        variants[name] = s
    return {**summary, "variants": variants, "margin": decision["margin"]}


def latest(run_dir) -> dict | None:
    """A run folder's fidelity summary, or None."""
    path = Path(run_dir) / "fidelity" / "summary.json" if run_dir else None
    return json.loads(path.read_text(encoding="utf-8")) if path and path.exists() else None


def table(summary: dict | None):
    """One row per variant: the figures and the verdict (pandas)."""
    import pandas as pd
    rows = []
    for name, s in ((summary or {}).get("variants") or {}).items():
        rows.append({"variant": name, "bits": s.get("bits"), "tokens": s.get("tokens"),
                     "kld_mean": s.get("kld_mean"), "kld_p99": (s.get("kld_percentiles") or {}).get("99"),
                     "same_top": s.get("same_top"), "rms_dp": s.get("rms_dp"), "ppl_ratio": s.get("ppl_ratio"),
                     "verdict": s.get("verdict") or "", "why": s.get("why", "")})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    from medwb.child import write_result
    with open(sys.argv[2], encoding="utf-8") as fh:
        job = json.load(fh)
    write_result({"reference": reference_child, "variant": child}[sys.argv[1]](job))
