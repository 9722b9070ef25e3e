"""``medwb eval`` and notebook 06: every variant answers a PromptCBLUE-format file, scored
by the official rules, with the accuracy guard against FP32.

The loop, per variant (FP32 PyTorch first: the reference):

1. the samples to ask: the file's, or ``limit`` per task (a seeded random sample of
   each task, the same every run);
2. what the prediction cache already holds for them. The cache is keyed by the model's
   fingerprint, the variant and everything that can change a greedy answer (threads,
   KV-cache precision, kernel build, the environment's lock file), and per sample by the
   hash of the exact prompt and its token budget: a rerun with the same parameters loads
   no model at all, and a run cut short resumes where it stopped;
3. the missing answers, from a fresh process in the backend's environment
   (``medwb.eval.worker``), which appends each answer to the cache as it is made: a crash
   loses only that variant's unfinished samples, and the error is recorded;
4. parse and score (``medwb.eval.scoring``), per-sample logs, then the guard
   (``medwb.eval.guard``) and the report (``medwb.eval.report``).

``rescore(run_dir)`` scores a run folder's predictions again without any model.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from medwb import jsonl
from medwb.clock import now
from medwb import envs
from medwb.backends import knobs, registry
from medwb.backends.variants import (DEFAULT_MATRIX, label, load_spec, parse_variants, prepare, resolve_model,
                                    routes_taking, variant_problems)
from medwb.errors import MedwbError, check_count
from medwb.eval import dataset, guard, scoring
from medwb.models import chat
from medwb.paths import REPO_DIR, cache_dir, model_identity, runs_dir, write_json_atomic
from medwb.tasks import evalset
from medwb.sysinfo import default_threads

# The compare matrix's variants that answer prompts: FP32, one low-bit variant of each
# route and runtime (bf16 PyTorch and the OpenVINO f32 IR add little to an accuracy check).
# The benchmark's default matrix: what notebook 03 compares is what gets task evidence.
DEFAULT_VARIANTS = ",".join(label(v) for v in DEFAULT_MATRIX)
# Greedy budgets per task family (new tokens); a task's own entry wins.
MAX_NEW_TOKENS = {"ner": 96, "spo": 128, "normalization": 32, "event": 128, "attr": 96, "causal": 128,
                  "cls_macro": 16, "cls_weighted": 16, "report": 320, "free_text": 128,
                  "diagnosis": 200, "sections": 560}
DEFAULTS = {"model": "demo", "eval_file": "", "variants": DEFAULT_VARIANTS, "limit": 0, "threads": 0,
            "task_map": {}, "timeout_s": 3600, "kernel_build": "match", "bootstrap": 1000,
            "artifacts_dir": "", "max_new_tokens": {}, "answers_cache": "", "cluster": "",
            "margin": guard.MARGIN, "rules": "official"}


# ---------------------------------------------------------------- the samples
def stratified(samples: list, limit: int, seed: str = "medwb-eval") -> list:
    """``limit`` samples of one task: a seeded random sample (the same one every run), kept
    in file order; all when limit is 0 or larger. Not an evenly spaced cut: files have
    periodic structure (the bundled yes/no task alternates its labels, so every 6th sample
    was always "是的"), and a random sample cannot alias with it."""
    import random
    if not limit or limit >= len(samples):
        return list(samples)
    task = samples[0].task_dataset if hasattr(samples[0], "task_dataset") else ""
    picked = sorted(random.Random(f"{seed}/{task}").sample(range(len(samples)), limit))
    return [samples[i] for i in picked]


def select(data: dataset.Dataset, limit: int) -> list:
    out = []
    for _, samples in data.by_task().items():
        out += stratified(samples, limit)
    return out


def budget(spec: scoring.TaskSpec, overrides: dict) -> int:
    return int(overrides.get(spec.name) or overrides.get(spec.family) or MAX_NEW_TOKENS[spec.family])


def sample_key(prompt: str, max_new_tokens: int) -> str:
    return hashlib.sha256(f"{max_new_tokens}\n{prompt}".encode()).hexdigest()[:20]


# ---------------------------------------------------------------- the cache
def file_name(variant_label: str) -> str:
    """A variant label as a file name (``openvino-genai:int4/bf16`` -> ``openvino-genai_int4_bf16``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", variant_label)


def samples_path(out_dir: Path, variant_label: str) -> Path:
    """The per-sample log of one variant: written by the run, read back by ``rescore``."""
    return Path(out_dir) / "samples" / f"{file_name(variant_label)}.jsonl"


def model_fingerprint(model_dir: Path) -> str:
    """The answer cache's model key: every byte of the model's files, so a checkpoint changed
    in the same folder never reuses old answers."""
    return model_identity(model_dir, content=True)


def cache_path(model_fp: str, v: dict, threads: int, kernel_build: str, root: str = "") -> Path:
    entry = registry.get(v["backend"])
    lock = REPO_DIR / "requirements" / f"{entry.env}.lock"
    from medwb.eval.worker import ANSWERS_VERSION
    # Every knob's effective value is in the key: a changed default never reuses old answers.
    settings = {"variant": label(v), "knobs": knobs.effective(entry, v), "threads": v.get("threads", threads),
                "answers_version": ANSWERS_VERSION,
                "kernel_build": v.get("kernel_build", kernel_build) if entry.kernel_builds else None, "greedy": True,
                "lock": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else None}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    name = file_name(label(v))
    return (Path(root) if root else cache_dir() / "eval") / model_fp / f"{name}-{digest}.jsonl"


def read_cache(path: Path) -> dict[str, dict]:
    """key -> answer; a line cut off by a crash is ignored (its sample is asked again)."""
    return {rec["key"]: rec for rec in jsonl.read_tolerant(path) if "key" in rec and "output" in rec}


# ---------------------------------------------------------------- answering
def answer_missing(v: dict, art: dict, asks: list[dict], cache: Path, cfg: dict, progress) -> str | None:
    """Run the worker for the samples not in ``cache``; None, or the error it ended with."""
    from medwb import child
    entry = registry.get(v["backend"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    jsonl.end_with_newline(cache)
    spec = {**load_spec(v, art, cfg["threads"], cfg["kernel_build"]), "out": str(cache), "samples": asks}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    command = [str(envs.python_of(entry.env)), "-m", "medwb.eval.worker", f.name]
    before = len(read_cache(cache))
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            job = pool.submit(child.run, command, timeout=cfg["timeout_s"], what=f"eval worker {label(v)}",
                              env={**os.environ, **entry.process_env(spec)})
            while True:  # the bar follows the cache file the worker appends to
                try:
                    job.result(timeout=2)
                    break
                except concurrent.futures.TimeoutError:
                    progress(len(read_cache(cache)) - before)
        return None
    except child.ChildError as e:
        return e.reason.removeprefix("failed: ")
    finally:
        progress(len(read_cache(cache)) - before)
        os.unlink(f.name)


# ---------------------------------------------------------------- the run
def run(cfg: dict | None = None, run_dir=None, log=print, progress: bool = True, answer_remote=None,
        **overrides) -> dict:
    """Evaluate every variant; write ``<run_dir>/eval/`` (per-sample logs, scores, report).
    Returns {"scores": DataFrame, "verdicts": {...}, "dir": Path, ...}.

    ``answer_remote(work, cfg, log, progress) -> {variant: error}`` answers the missing
    samples elsewhere (``work``: (variant, its answer cache, the asks it misses)); a cluster
    run (``cfg["cluster"]``) needs one: ``medwb.jobs.evaluate`` passes the Ray cluster's."""
    from tqdm.auto import tqdm

    from medwb import runner, sysinfo
    cfg = check_config({**DEFAULTS, **(cfg or {}), **{k: v for k, v in overrides.items() if v not in (None, "")}})
    model_dir, data = cfg["model_dir"], cfg["data"]
    for name, why in cfg.get("left_out", {}).items():  # the default matrix, narrowed to the family's routes
        log(f"{name}: not run: {why}")
    samples = select(data, cfg["limit"])
    specs = {t: scoring.task_spec(t, cfg["task_map"], cfg["rules"]) for t in data.tasks()}
    if run_dir:  # before any model runs: answers that cannot be written are refused now
        from medwb.paths import check_writable_dir
        check_writable_dir(run_dir, "--run-dir")
    else:
        run_dir = runner.new_run_dir()
        from medwb import provenance
        provenance.write(run_dir, {"eval": public(cfg)}, kind="eval")
    out_dir = Path(run_dir) / "eval"
    load = sysinfo.check_load(log=log)
    fp = model_fingerprint(model_dir)
    asks = []
    for s, prompt in zip(samples, chat.chat_prompts(model_dir, [s.input for s in samples])):
        n = budget(specs[s.task_dataset], cfg["max_new_tokens"])
        asks.append({"key": sample_key(prompt, n), "prompt": prompt, "max_new_tokens": n})
    log(f"evaluating {len(cfg['variants'])} variant(s) on {len(samples)} samples of {len(specs)} task(s) "
        f"from {data.path} (model {model_dir}, fingerprint {fp}, {cfg['threads']} threads)")
    predictions, errors, timing = {}, {}, {}
    work = []  # per variant: its answer cache and the asks it does not hold yet
    for v in cfg["variants"]:
        cache = cache_path(fp, v, cfg["threads"], cfg["kernel_build"], cfg["answers_cache"])
        have = read_cache(cache)
        missing = [a for a in asks if a["key"] not in have]
        if missing:
            log(f"{label(v)}: {len(asks) - len(missing)} answers cached, {len(missing)} to generate")
        else:
            log(f"{label(v)}: all {len(asks)} answers cached (no model loaded)")
        work.append((v, cache, missing))
    if cfg["cluster"] and any(missing for _, _, missing in work):  # every variant's shards at once
        if answer_remote is None:
            raise MedwbError(f"cluster {cfg['cluster']}: evaluate through medwb.jobs.evaluate (or `medwb eval "
                             "--cluster`), which connects to the cluster")
        started = time.perf_counter()
        errors.update(answer_remote([w for w in work if w[2]], cfg, log, progress))
        timing["cluster"] = round(time.perf_counter() - started, 1)
    for v, cache, missing in work:
        name = label(v)
        started = time.perf_counter()
        if missing and not cfg["cluster"]:
            art = prepare(model_dir, [v], {**cfg, "threads": cfg["threads"]}, log)[name]
            bar = tqdm(total=len(missing), desc=name, unit="sample", disable=not progress)

            def advance(done: int, bar=bar) -> None:
                bar.update(max(0, done - bar.n))
            error = art.get("error") or answer_missing(v, art, missing, cache, cfg, advance)
            bar.close()
            if error:
                errors[name] = error
        have = read_cache(cache)
        if name in errors:
            left = sum(a["key"] not in have for a in asks)
            errors[name] = f"{errors[name]} ({left} of {len(asks)} samples unanswered; run again to resume)"
            log(f"{name} failed: {errors[name]}")
        timing.setdefault(name, round(time.perf_counter() - started, 1))
        predictions[name] = [have.get(a["key"]) for a in asks]
    fp32 = label(registry.reference_for(model_dir))  # PyTorch FP32, or the family's stand-in
    result = score_run(samples, asks, specs, predictions, errors, cfg, out_dir, log=log, model_fp=fp, reference=fp32)
    result.update(timing=timing, machine_load=load, cpu=sysinfo.cpu().get("model"), model_fingerprint=fp)
    write_json_atomic(out_dir / "run.json", {"config": public(cfg), "errors": errors, "timing": timing,
                                             "machine_load": load, "cpu": result["cpu"],
                                             "model_fingerprint": fp, "reference": fp32})
    if _is_main_runs_folder(Path(run_dir)):  # a test's or another program's folder is never "the latest"
        write_json_atomic(Path(cfg["answers_cache"] or cache_dir() / "eval") / fp / "latest.json", result["summary"])
    return result


def _is_main_runs_folder(run_dir: Path) -> bool:
    """A run folder of this workbench's runs/ (the main job's, or `medwb eval`'s own)."""
    try:
        return Path(run_dir).resolve().parent == runs_dir().resolve()
    except OSError:
        return False


def summarize(result: dict, out_dir: Path, identity: dict | None = None) -> dict:
    """Per variant: overall score, its interval, the guard's decision and verdict (what
    notebook 03's recommendation reads as its quality axis); ``identity``: what was evaluated
    (model, evaluation set, limit), so a reader reuses it only for the same question."""
    from medwb.eval import guard
    overall = result["scores"][result["scores"].task == "overall"]
    variants = {}
    for r in overall.itertuples():
        verdict = result["verdicts"].get(r.variant, "")
        outcome = guard.decision(verdict)
        variants[r.variant] = {"overall": None if r.score != r.score else round(float(r.score), 2),
                               "ci": None if r.score != r.score else [round(float(r.ci_low), 2),
                                                                        round(float(r.ci_high), 2)],
                               "verdict": verdict, "decision": outcome,
                               "keeps_accuracy": outcome in (guard.KEEPS, guard.REFERENCE)}
    return {"created": now(), "run": str(out_dir.parent), "variants": variants, **(identity or {})}


def latest_summary(model: str = "demo", eval_from: str = "", answers_cache: str = "",
                   run_dir: str = "") -> dict | None:
    """The evaluation the recommendation reads, with where it came from (``source``):
    ``eval_from`` (a run folder) when given; else this run's own (``run_dir``: the main job
    evaluates before it compares); else the latest evaluation of this model (same files,
    same bundled evaluation set) by a run in runs/, never a test's or another program's
    folder; else None. An evaluation of another model is refused or skipped, never used."""
    if model.startswith("shape:"):  # random weights: nothing to evaluate
        if eval_from:
            raise MedwbError(f"eval_from '{eval_from}': model {model} has random weights, so no task "
                             "evaluation applies to it: leave eval_from empty")
        return None
    fp = model_fingerprint(resolve_model(model))
    if eval_from:
        summary = _read_summary(Path(eval_from) / "eval" / "summary.json", "eval_from")
        if summary.get("model_fingerprint") not in (None, fp):
            raise MedwbError(f"eval_from '{eval_from}' evaluated another model (fingerprint "
                             f"{summary['model_fingerprint']}, this one {fp}): give a run folder of this model")
        return {**summary, "source": f"eval_from {eval_from}"}
    own = Path(run_dir) / "eval" / "summary.json" if run_dir else None
    if own and own.exists():
        summary = _read_summary(own, "run_dir")
        if summary.get("model_fingerprint") == fp:
            return {**summary, "source": f"this run ({run_dir})"}
    latest = Path(answers_cache or cache_dir() / "eval") / fp / "latest.json"
    if not latest.exists():
        return None
    summary = json.loads(latest.read_text(encoding="utf-8"))
    folder = Path(summary.get("run", ""))
    if summary.get("model_fingerprint") != fp or summary.get("eval_file_sha256") != _sha(evalset.EVAL_FILE) \
            or summary.get("rules", "official") != "official" or not _is_main_runs_folder(folder) \
            or not (folder / "eval" / "summary.json").exists():
        return None
    return {**summary, "source": f"an earlier evaluation of this model ({folder}, {summary.get('created')}; "
                                 f"{summary.get('limit') or 'all'} samples per task)"}


def _read_summary(path: Path, parameter: str) -> dict:
    if not path.exists():
        raise MedwbError(f"{parameter} '{path.parent.parent}' has no eval/summary.json: give a run folder "
                         "written by `medwb eval` or notebook 06, or leave it empty")
    return json.loads(path.read_text(encoding="utf-8"))


def _sha(path) -> str | None:
    from medwb.paths import sha256_file
    return sha256_file(path) if Path(path).exists() else None


def score_run(samples, asks, specs, predictions, errors, cfg, out_dir: Path, log=print, model_fp: str | None = None,
              reference: str | None = None) -> dict:
    """Per-sample logs, scores, the guard and the report, from answers already made;
    ``reference``: the FP32 variant's label (PyTorch's when not given)."""
    from medwb.eval import report
    rows: dict[str, list[dict]] = {}
    for name, answers in predictions.items():
        rows[name] = []
        for s, ask, ans in zip(samples, asks, answers):
            spec = specs[s.task_dataset]
            gold, _ = scoring.parse(spec, s.target, s.answer_choices)
            row = {"variant": name, "task": s.task_dataset, "sample_id": s.sample_id, "prompt_hash": ask["key"],
                   "output": None if ans is None else ans["output"], "answered": ans is not None}
            if ans is not None:
                pred, failed = scoring.parse(spec, ans["output"], s.answer_choices)
                stats = scoring.sample_stats(spec, gold, pred)
                row.update(answer=pred, parse_failed=failed, score=scoring.sample_score(spec, stats),
                           n_new_tokens=ans.get("n_new_tokens"), seconds=ans.get("seconds"), _stats=stats)
            rows[name].append(row)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rs in rows.items():
        jsonl.write(samples_path(out_dir, name), ({k: v for k, v in r.items() if k != "_stats"} for r in rs))
    fp32 = parse_variants(reference)[0] if reference else registry.REFERENCE
    reference = next((label(v) for v in cfg["variants"] if registry.is_reference(v, fp32)), None)
    scores, verdicts = guard.evaluate(rows, specs, reference=reference, errors=errors, margin=cfg["margin"],
                                      resamples=cfg["bootstrap"], seed=0)
    from medwb.models import random_weights
    if cfg.get("model_dir") and random_weights.is_speed_only(cfg["model_dir"]):
        verdicts = guard.not_judged(verdicts, random_weights.SPEED_ONLY_WHY)  # as fidelity says it
    from medwb import sysinfo
    paths = report.write(out_dir, scores, verdicts, errors=errors, meta={
        "eval_file": str(cfg["data"].path), "samples": len(samples), "limit": cfg["limit"],
        "threads": cfg["threads"], "reference": reference, "cpu": sysinfo.cpu().get("model"),
        "rules": f"{cfg['rules']}: {scoring.RULES[cfg['rules']]}"})
    log(report.summary(scores, verdicts))
    result = {"scores": scores, "verdicts": verdicts, "dir": out_dir, "paths": paths, "errors": errors,
              "rows": rows}
    result["summary"] = summarize(result, out_dir, identity={
        "model_fingerprint": model_fp, "eval_file": str(cfg["data"].path),
        "eval_file_sha256": _sha(cfg["data"].path), "limit": cfg["limit"], "task_map": cfg["task_map"],
        "margin": cfg["margin"], "rules": cfg["rules"]})
    write_json_atomic(out_dir / "summary.json", result["summary"])
    return result


def rescore(run_dir, log=print, rules: str = "") -> dict:
    """Score a run folder's answers again (after a scoring fix, say) without any model:
    the answers are read from its per-sample logs, the samples from its eval file;
    ``rules`` (``scoring.RULES``): another rule set, else the run's own."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "eval" / "run.json"
    if not meta_path.exists():
        raise MedwbError(f"rescore: '{run_dir}' has no eval/run.json: give a run folder written by "
                         "`medwb eval` or notebook 06")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    cfg = check_config({**DEFAULTS, **meta["config"], **({"rules": rules} if rules else {})}, need_model=False)
    data = cfg["data"]
    samples = select(data, cfg["limit"])
    specs = {t: scoring.task_spec(t, cfg["task_map"], cfg["rules"]) for t in data.tasks()}
    predictions, hashes = {}, {}
    for v in cfg["variants"]:
        name = label(v)
        path = samples_path(run_dir / "eval", name)
        logged = {}
        if path.exists():
            logged = {r["sample_id"]: r for r in jsonl.read(path)}
        predictions[name] = [{"output": logged[s.sample_id]["output"], "n_new_tokens": logged[s.sample_id].get(
            "n_new_tokens"), "seconds": logged[s.sample_id].get("seconds")}
            if logged.get(s.sample_id, {}).get("answered") else None for s in samples]
        hashes.update({s.sample_id: logged[s.sample_id]["prompt_hash"] for s in samples if s.sample_id in logged})
    asks = [{"key": hashes.get(s.sample_id)} for s in samples]
    # Other rules than the run's own: side by side in eval/rules-<name>/, the run's scores kept.
    out_dir = run_dir / "eval" / (f"rules-{cfg['rules']}" if rules and rules != meta["config"].get(
        "rules", "official") else "")
    return score_run(samples, asks, specs, predictions, meta.get("errors", {}), cfg, out_dir, log=log,
                     model_fp=meta.get("model_fingerprint"), reference=meta.get("reference"))


# ---------------------------------------------------------------- configuration
def check_config(cfg: dict, need_model: bool = True) -> dict:
    """Validate everything before anything runs; one line per problem, naming the parameter."""
    cfg = dict(cfg)
    default = cfg["variants"] in (DEFAULT_VARIANTS, DEFAULT_MATRIX)
    if isinstance(cfg["variants"], str):
        cfg["variants"] = parse_variants(cfg["variants"])
    if not cfg["variants"]:
        raise MedwbError("variants: give at least one, e.g. pytorch:fp32,openvino-genai:int8/bf16")
    if not isinstance(cfg["limit"], int) or cfg["limit"] < 0:
        raise MedwbError(f"limit {cfg['limit']!r}: give a whole number of samples per task (0: all)")
    if not isinstance(cfg["bootstrap"], int) or cfg["bootstrap"] < 100:
        raise MedwbError(f"bootstrap {cfg['bootstrap']!r}: give at least 100 resamples (1000 is usual)")
    if isinstance(cfg["task_map"], str):
        cfg["task_map"] = parse_task_map(cfg["task_map"])
    if cfg["rules"] not in scoring.RULES:
        raise MedwbError(f"rules {cfg['rules']!r}: use one of {', '.join(scoring.RULES)} (official: the "
                         "PromptCBLUE repository's current rules)")
    check_count("threads", cfg["threads"], 0, "0: all cores")
    # On a cluster, 0 means one thread per shard: shards then pack one per core of every node.
    cfg["threads"] = cfg["threads"] or (1 if cfg.get("cluster") else default_threads())
    cfg["data"] = dataset.load(cfg["eval_file"] or evalset.EVAL_FILE, task_map=cfg["task_map"] or None)
    if need_model:
        cfg["model_dir"] = resolve_model(cfg["model"])
        if default:  # not chosen: the routes that take the model's family, as the benchmark's
            cfg["variants"], cfg["left_out"] = routes_taking(cfg["model_dir"], cfg["variants"])
        problems = [p for i, v in enumerate(cfg["variants"])
                    for p in variant_problems(v, f"variants[{i}]", cfg["model_dir"])]
        if problems:
            raise MedwbError("; ".join(problems))
    return cfg


def parse_task_map(text: str) -> dict[str, str]:
    """``MyNER=CMeEE-V2,MyCls=cls_macro`` -> dict."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, sep, target = item.partition("=")
        if not sep or not name or not target:
            raise MedwbError(f"task_map item {item!r}: write NAME=TASK_OR_FAMILY, e.g. MyNER=CMeEE-V2")
        out[name.strip()] = target.strip()
    return out


def public(cfg: dict) -> dict:
    """The configuration as written to run.json (no loaded objects)."""
    out = {k: v for k, v in cfg.items() if k not in ("data", "model_dir")}
    out["eval_file"] = str(cfg["data"].path) if "data" in cfg else cfg.get("eval_file")
    out["variants"] = ",".join(label(v) for v in cfg["variants"])
    return out


if __name__ == "__main__":  # pragma: no cover - convenience
    sys.exit("use `medwb eval`")
