"""``medwb bench``: one benchmark for every variant, against the hardware's limit, with quality.

A *variant* is a backend at a precision: PyTorch FP32/BF16, bigdl-llm low-bit types (API
route, loaded from a ``save_low_bit`` folder as a deployment would), llm-cli native files,
and OpenVINO IRs under optimum-intel and openvino-genai. Each variant runs in its own fresh
process (in the bigdl environment where needed, through ``medwb.probe``), so memory figures
are clean and one crash ends one variant, not the run.

Protocol, per variant and token pair (input, output): the prompt cut or repeated to exactly
the input length, greedy, output length forced, one untimed warm-up, ``trials`` timed runs
(medians reported), the thread count recorded. Before the matrix, the machine's memory
bandwidth is measured; every record gets its decode floor (bytes read per token /
bandwidth) and its next-token latency as a percentage of that limit.

On the demo model every variant also answers held-out cases of both workflows, for quality
beside speed. Random-weight checkpoints of real shapes (``medwb.shapes``) are speed-only.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import time
from pathlib import Path

from medwb import bandwidth, envs, evaluate, openvino_export as oe, shapes
from medwb.backends.openvino import KV_CACHE_PRECISIONS
from medwb.errors import MedwbError
from medwb.measure import dir_size_bytes
from medwb.paths import cache_dir, checkpoint_bytes, check_model_dir, model_config, write_text_atomic
from medwb.probe import BACKEND_ENV, BACKENDS, run_probe
from medwb.records import now, read_records, variant_record, write_records

DEFAULT_VARIANTS = [
    {"backend": "pytorch", "precision": "fp32"},
    {"backend": "pytorch", "precision": "bf16"},
    {"backend": "bigdl", "precision": "sym_int4"},
    {"backend": "bigdl", "precision": "sym_int8"},
    {"backend": "bigdl-cli", "precision": "int4"},
    {"backend": "openvino-optimum", "weights": "int8", "precision": "bf16"},
    {"backend": "openvino-optimum", "weights": "int4", "precision": "bf16"},
    {"backend": "openvino-genai", "weights": "fp16", "precision": "f32"},
    {"backend": "openvino-genai", "weights": "int8", "precision": "bf16"},
    {"backend": "openvino-genai", "weights": "int4", "precision": "bf16"},
]
DEFAULT_CONFIG = {
    "model": "demo",            # "demo", "shape:<name>" (random weights, speed only) or a checkpoint folder
    "token_pairs": [[32, 64], [512, 128]],
    "trials": 3,
    "threads": 0,               # 0: all cores
    "quality_cases": 4,         # held-out cases per workflow for quality (demo-like models); 0: none
    "bandwidth_mb": 1024,
    "kernel_build": "match",    # bigdl kernels: "match" (the CPU's own flags), "" (bigdl decides), a build
    "timeout_s": 1800,          # per variant
    "artifacts_dir": "",        # converted models (IRs, low-bit folders, native files); empty: the medwb cache
    "variants": DEFAULT_VARIANTS,
}
VARIANT_KEYS = {"backend", "precision", "weights", "kernel_build", "kv_cache_precision"}
# Bytes per KV-cache element by backend when the record does not report it.
KV_BYTES = {"pytorch:fp32": 4, "pytorch:bf16": 2, "bigdl": 4, "bigdl-cli": 2}
_KV_TYPE_BYTES = {"float32": 4, "f32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "f16": 2, "uint8_t": 1, "u8": 1}


def label(v: dict) -> str:
    weights = f"{v['weights']}/" if v.get("weights") else ""
    return f"{v['backend']}:{weights}{v['precision']}"


# ---------------------------------------------------------------- configuration

def load_config(path=None, **overrides) -> dict:
    """DEFAULT_CONFIG, updated from a YAML/JSON file, then from keyword overrides (None: unset)."""
    import yaml
    cfg = json.loads(json.dumps(DEFAULT_CONFIG))
    if path:
        p = Path(path)
        if not p.is_file():
            raise MedwbError(f"config file '{p}' does not exist")
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise MedwbError(f"config file '{p}' must hold a mapping of settings")
        cfg.update(loaded)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if unknown:
        raise MedwbError(f"config: unknown setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULT_CONFIG)}")
    return cfg


def parse_variants(text: str) -> list[dict]:
    """``pytorch:fp32,openvino-genai:int4/bf16,bigdl:sym_int4`` -> variant dicts."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        backend, _, rest = item.partition(":")
        weights, _, precision = rest.rpartition("/")
        out.append({"backend": backend, "precision": precision, **({"weights": weights} if weights else {})})
    return out


def parse_token_pairs(text: str) -> list[list[int]]:
    """``32-64,512-128`` -> [[32, 64], [512, 128]]."""
    try:
        return [[int(a), int(b)] for a, b in (p.split("-") for p in text.split(",") if p.strip())]
    except ValueError:
        raise MedwbError(f"token pairs {text!r}: write them as INPUT-OUTPUT, comma separated, e.g. 32-64,512-128")


def resolve_model(model: str) -> Path:
    if model in ("", "demo"):
        from medwb import demo_model
        return demo_model.ensure()
    if model.startswith("shape:"):
        return shapes.ensure(model.split(":", 1)[1])
    return check_model_dir(model, "model")


def validate(cfg: dict) -> dict:
    """Every problem found before anything runs, each naming its entry; raises MedwbError."""
    from medwb.bigdl_kernels import BUILDS
    model = cfg["model"]
    if isinstance(model, str) and model.startswith("shape:") and model[6:] not in shapes.SHAPES:
        raise MedwbError(f"model: shape {model[6:]!r} is unknown; use one of {', '.join(shapes.SHAPES)}")
    model_dir = resolve_model(model)
    context = model_config(model_dir).get("max_position_embeddings", 2048)
    problems = []
    pairs = cfg["token_pairs"]
    if not isinstance(pairs, list) or not pairs:
        problems.append("token_pairs must be a non-empty list of [input, output] token counts")
        pairs = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, int) and x > 0 for x in pair)):
            problems.append(f"token_pairs[{i}] {pair!r}: must be [input, output], two positive integers")
        elif sum(pair) > context:
            problems.append(f"token_pairs[{i}] {list(pair)}: {sum(pair)} tokens exceed the model's context of "
                            f"{context} (max_position_embeddings); shorten the pair")
    for key in ("trials", "quality_cases", "threads", "bandwidth_mb", "timeout_s"):
        if not isinstance(cfg[key], int) or cfg[key] < (1 if key in ("trials", "timeout_s") else 0):
            problems.append(f"{key} must be a {'positive' if key in ('trials', 'timeout_s') else 'non-negative'} "
                            f"integer, got {cfg[key]!r}")
    kb = cfg.get("kernel_build") or ""
    if kb and kb != "match" and kb not in BUILDS:
        problems.append(f"kernel_build {kb!r} is unknown; use '', 'match' or one of {', '.join(BUILDS)}")
    variants = cfg["variants"]
    if not isinstance(variants, list) or not variants:
        problems.append("variants must be a non-empty list")
        variants = []
    for i, v in enumerate(variants):
        problems += variant_problems(v, f"variants[{i}]", model_dir)
    if problems:
        raise MedwbError("bad benchmark config:\n  - " + "\n  - ".join(problems))
    labels = [label(v) for v in variants]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise MedwbError(f"variants: {', '.join(dup)} listed more than once")
    return {"model_dir": model_dir, "context": context, "speed_only": shapes.is_speed_only(model_dir)}


def variant_problems(v, where: str, model_dir: Path) -> list[str]:
    """What is wrong with one variant (backend, precision, weights, ...), each naming ``where``."""
    from medwb.backends.bigdl import check_low_bit
    from medwb.bigdl_native import cli_route_problems
    problems: list[str] = []
    if not isinstance(v, dict):
        return [f"{where} {v!r}: must be a mapping with backend and precision"]
    where = f"{where} ({label({'precision': '?', **v}) if 'backend' in v else v})"
    extra = sorted(set(v) - VARIANT_KEYS)
    if extra:
        problems.append(f"{where}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(VARIANT_KEYS))}")
    backend, precision = v.get("backend"), v.get("precision")
    if backend not in BACKENDS:
        return problems + [f"{where}: backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}"]
    if precision not in BACKENDS[backend]:
        if backend == "bigdl":
            try:
                check_low_bit(precision, where)
            except MedwbError as e:
                problems.append(str(e))
        else:
            problems.append(f"{where}: precision {precision!r} is not supported by {backend}; use one of "
                            f"{', '.join(BACKENDS[backend])}")
    if backend.startswith("openvino") and v.get("weights") not in oe.WEIGHT_FORMATS:
        problems.append(f"{where}: weights {v.get('weights')!r} must be one of {', '.join(oe.WEIGHT_FORMATS)} "
                        "(the IR's weight format)")
    if not backend.startswith("openvino") and v.get("weights"):
        problems.append(f"{where}: 'weights' applies to OpenVINO backends only")
    if backend == "bigdl-cli":
        why = cli_route_problems(model_dir, "llama")
        if why:
            problems.append(f"{where}: this model cannot take the llm-cli route: {'; '.join(why)}")
    kv = v.get("kv_cache_precision")
    if kv and (not backend.startswith("openvino") or kv not in KV_CACHE_PRECISIONS):
        problems.append(f"{where}: kv_cache_precision {kv!r}: OpenVINO backends take "
                        f"{', '.join(KV_CACHE_PRECISIONS)}")
    if BACKEND_ENV[backend] == "bigdl" and not envs.available("bigdl"):
        problems.append(f"{where}: the bigdl environment is missing ({envs.python_of('bigdl')}): run `make setup`")
    return problems


# ---------------------------------------------------------------- artifacts

def artifacts_dir(model_dir: Path, root: str = "") -> Path:
    """Converted models are kept per source model and reused across runs."""
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(model_dir).resolve()).strip("/"))[-120:]
    return (Path(root) if root else cache_dir() / "bench") / key


def prepare(model_dir: Path, variants: list[dict], cfg: dict, log=print) -> dict[str, dict]:
    """Per variant: the folder or file it loads, made (once) in a fresh process; a failure
    becomes that variant's error and the others carry on."""
    root = artifacts_dir(model_dir, cfg.get("artifacts_dir", ""))
    out: dict[str, dict] = {}
    for v in variants:
        b = v["backend"]
        if b == "pytorch":
            out[label(v)] = {"path": model_dir, "bytes": checkpoint_bytes(model_dir) // (2 if v["precision"] == "bf16" else 1)}
        elif b.startswith("openvino"):
            ir = root / f"openvino-{v['weights']}"
            if not oe.is_complete(ir):
                log(f"exporting {v['weights']} IR to {ir} ...")
            res = envs.query_json("main", ["-m", "medwb.openvino_export", str(model_dir), str(ir), v["weights"]],
                                  timeout=cfg["timeout_s"], raise_error=False)
            out[label(v)] = ({"error": res["error"]} if "error" in res else
                             {"path": ir, "bytes": res["ir_bytes"], "export_s": res["export_s"]})
        elif b == "bigdl":
            folder = root / f"bigdl-{v['precision']}"
            if not (folder / "config.json").exists():
                log(f"bigdl {v['precision']}: quantizing and saving the low-bit folder {folder} ...")
                res = run_probe({"backend": "bigdl", "model_path": str(model_dir), "precision": v["precision"],
                                 "threads": cfg["threads"], "save_to": str(folder)},
                                python=str(envs.python_of("bigdl")), timeout=cfg["timeout_s"])
                if "error" in res:
                    out[label(v)] = {"error": f"save_low_bit failed: {res['error']}"}
                    continue
            out[label(v)] = {"path": folder, "bytes": dir_size_bytes(folder)}
        elif b == "bigdl-cli":  # converted inside the probe (llm-convert needs the bigdl env)
            out[label(v)] = {"path": model_dir, "native_dir": root / "bigdl-cli"}
    return out


# ---------------------------------------------------------------- quality

def quality_cases(n: int) -> list[dict]:
    """The first ``n`` held-out cases of each workflow, with the prompt and token budget."""
    from medwb import corpus, prompts
    from medwb.demo_model import RECIPE
    out = []
    for task in corpus.TASKS:
        for rec in corpus.load_records(task, limit=n):
            out.append({"task": task, "prompt": prompts.render_chat([{"role": "user", "content": rec["input"]}]),
                        "target": rec["target"], "disease": rec["case"]["disease"],
                        "budget": RECIPE["eval"]["max_new_tokens"][task]})
    return out


def _rouge_l(candidates: list[str], references: list[str]) -> float:
    """Mean character-level ROUGE-L F1 (Chinese has no spaces: characters are the tokens)."""
    from rouge_score import rouge_scorer

    class _Chars:
        def tokenize(self, text):
            return [c for c in text if not c.isspace()]

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Chars())
    scores = [scorer.score(r, c)["rougeL"].fmeasure for c, r in zip(candidates, references)]
    return round(sum(scores) / len(scores), 4) if scores else None


def quality(texts: list[str], cases: list[dict], reference_texts: list[str] | None) -> dict:
    """Task quality (diagnosis top-3, discharge sections, ROUGE-L vs the reference record)
    and agreement with FP32's output text (ROUGE-L)."""
    from medwb import corpus
    vocab = corpus.diagnosis_vocabulary()
    q: dict = {}
    for task in ("diagnosis", "discharge"):
        idx = [i for i, c in enumerate(cases) if c["task"] == task]
        if not idx:
            continue
        outs = [texts[i] for i in idx]
        if task == "diagnosis":
            q["diagnosis_top3_rate"] = round(evaluate.rate(
                evaluate.diagnosis_top3_hit(texts[i], cases[i]["disease"], vocab) for i in idx), 4)
        else:
            q["discharge_complete_rate"] = round(evaluate.rate(evaluate.has_all_sections(o) for o in outs), 4)
        q[f"{task}_rouge_l_vs_record"] = _rouge_l(outs, [cases[i]["target"] for i in idx])
    if reference_texts:
        q["rouge_l_vs_fp32"] = _rouge_l(texts, reference_texts)
    q["n_cases"] = len(cases)
    return q


# ---------------------------------------------------------------- running

def _kv_bytes(v: dict, result: dict) -> float:
    kv = (result.get("compiled_properties") or {}).get("KV_CACHE_PRECISION", "")
    m = re.search(r"'(\w+)'", kv)
    if m and m[1] in _KV_TYPE_BYTES:
        return _KV_TYPE_BYTES[m[1]]
    return KV_BYTES.get(f"{v['backend']}:{v['precision']}", KV_BYTES.get(v["backend"], 2))


def _records_for(v: dict, art: dict, result: dict, reference: dict | None, cases: list[dict], ctx: dict) -> list[dict]:
    """One record per token pair (or one error record)."""
    cfg_model = model_config(ctx["model_dir"])
    base = {"variant": label(v), "weights": v.get("weights"), "model": str(ctx["model_dir"]),
            "speed_only": ctx["speed_only"], "threads": ctx["threads"], "size_bytes": art.get("bytes"),
            "export_s": art.get("export_s"), "bandwidth_read_gb_s": ctx["bandwidth"]["read_gb_s"],
            "cpu": ctx["cpu"], "run_id": ctx["run_id"]}
    route = {"bigdl": "bigdl-api", "bigdl-cli": "bigdl-cli"}.get(v["backend"], v["backend"])
    family = "bigdl" if v["backend"].startswith("bigdl") else v["backend"].split("-")[0]
    if "error" in result:
        return [variant_record(family, route, v["precision"], result, None, **base)]
    size = result.get("saved_bytes") or art.get("bytes") or 0
    base["size_bytes"] = size
    # Bytes read per token: every weight except the embedding table (one row is read).
    # Llama-style config keys; for other families the floor is left out, not guessed.
    try:
        params = shapes.parameter_count({**cfg_model, "num_key_value_heads": cfg_model.get("num_key_value_heads")
                                         or cfg_model["num_attention_heads"]})
        weights_read = size * (1 - cfg_model["vocab_size"] * cfg_model["hidden_size"] / params)
    except (KeyError, TypeError, ZeroDivisionError):
        weights_read = None
    kv_elem = _kv_bytes(v, result)
    qual = None
    if cases and result.get("texts"):
        qual = quality(result["texts"], cases, reference.get("texts") if reference else None)
    records = []
    for pair in result.get("pairs", []):
        pair_result = {**result, **{k: x for k, x in pair.items() if k not in ("input_tokens", "output_tokens")}}
        rec = variant_record(family, route, v["precision"], pair_result,
                             reference if reference is not result else None,
                             input_tokens=pair["input_tokens"], output_tokens=pair["output_tokens"], **base)
        if weights_read is not None:
            kv_read = bandwidth.kv_bytes_per_token(cfg_model, pair["input_tokens"] + pair["output_tokens"] / 2, kv_elem)
            floor = bandwidth.decode_floor_ms(weights_read, kv_read, ctx["bandwidth"]["read_gb_s"])
            rec.update(weights_read_bytes=int(weights_read), kv_read_bytes=int(kv_read), kv_bytes_per_element=kv_elem,
                       decode_floor_ms=round(floor, 4),
                       pct_of_limit=round(100 * floor / rec["tpot_ms"], 1) if rec.get("tpot_ms") else None)
        builds = sorted(set((result.get("kernel_builds") or {}).values()))
        rec["kernel_build"] = pair.get("kernel_build") or ",".join(builds) or None
        if v["backend"].startswith("bigdl"):  # its own ISA build of the low-bit kernels
            rec["kernels"] = f"{'llm-cli' if v['backend'] == 'bigdl-cli' else 'bigdl'} {rec['kernel_build']} build"
        if qual:
            rec["quality"] = qual
        records.append(rec)
    return records


def run(cfg: dict, run_dir=None, log=print, progress: bool = True) -> list[dict]:
    """Validate, measure bandwidth, prepare artifacts, then every variant in a fresh process.
    ``run_dir`` empty: a new ``runs/<timestamp>``, made only once the config is valid.
    Records are rewritten after every variant (JSON lines and CSV), so a run cut short
    keeps what it measured."""
    from tqdm.auto import tqdm

    from medwb import runner, sysinfo
    checked = validate(cfg)
    model_dir = checked["model_dir"]
    threads = cfg["threads"] or os.cpu_count() or 1
    cfg = {**cfg, "threads": threads}
    if run_dir:
        run_dir = Path(run_dir)
    else:  # a run of its own: it gets its own manifest (inside the main job, the job's is kept)
        run_dir = runner.new_run_dir()
        from medwb import provenance
        provenance.write(run_dir, {"bench": cfg}, kind="bench")
    cpu = sysinfo.cpu()
    log(f"model {model_dir}{' (random weights: speed only)' if checked['speed_only'] else ''}; "
        f"{len(cfg['variants'])} variants x {len(cfg['token_pairs'])} token pairs, {cfg['trials']} trials, "
        f"{threads} threads")
    load = sysinfo.check_load(log=log)  # each variant's record also has the load at its own start
    bw = bandwidth.measure(threads, cfg["bandwidth_mb"])
    log(f"memory bandwidth: read {bw['read_gb_s']} GB/s, copy {bw['copy_gb_s']} GB/s ({bw['method']})")
    ctx = {"model_dir": model_dir, "speed_only": checked["speed_only"], "threads": threads, "bandwidth": bw,
           "cpu": {"model": cpu["model"], "flags": sorted(sysinfo.cpu_flags() & {
               "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni"})},
           "run_id": run_dir.name}
    arts = prepare(model_dir, cfg["variants"], cfg, log)
    cases = [] if checked["speed_only"] or not cfg["quality_cases"] else quality_cases(cfg["quality_cases"])
    pair_prompt = cases[0]["prompt"] if cases else evaluate.heldout_prompts(1)[0]
    kb = cfg.get("kernel_build") or None
    if kb == "match" and any(v["backend"].startswith("bigdl") for v in cfg["variants"]):
        kb = None if not envs.available("bigdl") else envs.query_json(
            "bigdl", ["-c", "from medwb import bigdl_kernels; from medwb.child import write_result; "
                      "write_result(bigdl_kernels.matching_build())"])
    # FP32 PyTorch first: the reference for agreement.
    order = sorted(cfg["variants"], key=lambda v: label(v) != "pytorch:fp32")
    records: list[dict] = [{"record_type": "run", "created": now(), "config": cfg, "model": str(model_dir),
                            "run_dir": str(run_dir),
                            "speed_only": checked["speed_only"], "bandwidth": bw, "cpu": ctx["cpu"],
                            "machine_load": load,
                            "python": sys.version.split()[0]}]
    reference = None
    bar = tqdm(order, desc="bench", unit="variant", disable=not progress)
    for v in bar:
        bar.set_postfix_str(label(v))
        art = arts[label(v)]
        started = time.perf_counter()
        if "error" in art:
            result = {"error": art["error"]}
        else:
            spec = {"backend": v["backend"], "model_path": str(art["path"]), "precision": v["precision"],
                    "threads": threads, "kv_cache_precision": v.get("kv_cache_precision"),
                    "kernel_build": v.get("kernel_build", kb) if v["backend"].startswith("bigdl") else None,
                    "token_pairs": cfg["token_pairs"], "pair_prompt": pair_prompt, "trials": cfg["trials"],
                    "prompts": [c["prompt"] for c in cases], "prompt_budgets": [c["budget"] for c in cases],
                    "logits": False}
            if v["backend"] == "bigdl-cli":
                spec["native_dir"] = str(art["native_dir"])
            result = run_probe(spec, python=str(envs.python_of(BACKEND_ENV[v["backend"]])), timeout=cfg["timeout_s"])
        if label(v) == "pytorch:fp32" and "error" not in result:
            reference = result
        new = _records_for(v, art, result, reference, cases, ctx)
        for r in new:
            r["wall_s"] = round(time.perf_counter() - started, 1)
        records += new
        if "error" in result:
            log(f"{label(v)} failed: {result['error']}")
        write(records, run_dir)
    return records


def write(records: list[dict], run_dir) -> dict[str, Path]:
    """``records/bench.jsonl`` (every field) and ``records/bench.csv`` (flat), both atomic."""
    run_dir = Path(run_dir)
    jsonl = write_records(records, run_dir, "bench")
    rows = [flat(r) for r in records if r.get("record_type") == "variant"]
    buf = io.StringIO()
    if rows:
        fields = list(dict.fromkeys(k for row in rows for k in row))
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    csv_path = run_dir / "records" / "bench.csv"
    write_text_atomic(csv_path, buf.getvalue())
    return {"jsonl": jsonl, "csv": csv_path}


def flat(r: dict) -> dict:
    """One CSV row: nested dicts become dotted columns, lists JSON."""
    out = {}
    for k, v in r.items():
        if isinstance(v, dict):
            for k2, v2 in flat(v).items():
                out[f"{k}.{k2}"] = v2
        elif isinstance(v, list):
            out[k] = json.dumps(v, ensure_ascii=False)
        else:
            out[k] = v
    return out


def load(run_dir) -> list[dict]:
    return read_records(Path(run_dir) / "records" / "bench.jsonl")


def table(records: list[dict]):
    """The readable table: one row per variant and token pair."""
    import pandas as pd
    rows = []
    for r in records:
        if r.get("record_type") != "variant":
            continue
        q, a = r.get("quality") or {}, r.get("agreement_vs_fp32") or {}
        rows.append({"variant": r["variant"], "tokens": f"{r.get('input_tokens', '?')}-{r.get('output_tokens', '?')}",
                     "load_s": r.get("load_s"), "ttft_ms": r.get("ttft_ms"), "tpot_ms": r.get("tpot_ms"),
                     "tok_s": r.get("throughput_tok_s"), "floor_ms": r.get("decode_floor_ms"),
                     "pct_of_limit": r.get("pct_of_limit"), "peak_rss_MB": r.get("peak_rss_mb"),
                     "size_MB": round(r["size_bytes"] / 1e6, 1) if r.get("size_bytes") else None,
                     "kernels": r.get("kernels"), "exact_vs_fp32": a.get("exact_match_rate"),
                     "rougeL_vs_fp32": q.get("rouge_l_vs_fp32"), "dx_top3": q.get("diagnosis_top3_rate"),
                     "dc_complete": q.get("discharge_complete_rate"), "error": r.get("error", "")})
    return pd.DataFrame(rows)


def run_or_load(config_file="", records_from="", run_dir="", log=print, **overrides) -> list[dict]:
    """Notebook 03's entry: load the records of an earlier run folder, or run the benchmark
    (config file, then the notebook's parameters; empty parameters keep the config's)."""
    if records_from:
        if not (Path(records_from) / "records" / "bench.jsonl").exists():
            raise MedwbError(f"records_from '{records_from}' has no records/bench.jsonl: give a run folder "
                             "written by `medwb bench` or notebook 03, or leave it empty to run now")
        return load(records_from)
    if isinstance(overrides.get("variants"), list) and overrides["variants"] and \
            isinstance(overrides["variants"][0], str):
        overrides["variants"] = parse_variants(",".join(overrides["variants"]))
    overrides = {k: v for k, v in overrides.items() if v not in ("", [], None)}
    return run(load_config(config_file or None, **overrides), run_dir, log=log)
