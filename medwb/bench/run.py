"""``medwb bench``: one benchmark for every variant, against the hardware's limit, with quality.

A *variant* is a backend at a precision: PyTorch FP32/BF16, bigdl-llm low-bit types (API
route, loaded from a ``save_low_bit`` folder as a deployment would), llm-cli native files,
and OpenVINO IRs under optimum-intel and openvino-genai. Each variant runs in its own fresh
process (in the bigdl environment where needed, through ``medwb.bench.probe``), so memory figures
are clean and one crash ends one variant, not the run.

Protocol, per variant and token pair (input, output): the prompt cut or repeated to exactly
the input length, greedy, output length forced, one untimed warm-up, ``trials`` timed runs
(medians reported), the thread count recorded. Before the matrix, the machine's memory
bandwidth is measured; every record gets its decode floor (bytes read per token /
bandwidth) and its next-token latency as a percentage of that limit.

On the demo model every variant also answers held-out cases of both workflows, for quality
beside speed. Random-weight checkpoints of real shapes (``medwb.models.random_weights``) are speed-only.
"""
from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from pathlib import Path

from medwb import envs
from medwb.backends import knobs, registry
from medwb.backends.variants import base_label, label, load_spec, parse_variants, prepare
from medwb.bench import bandwidth, roofline
from medwb.bench.config import validate
from medwb.bench.probe import against_reference, run_probe
from medwb import jsonl
from medwb.bench.records import table as records_table, variant_record, write_records
from medwb.clock import now
from medwb.models import architectures
from medwb.paths import model_config, write_text_atomic
from medwb.tasks.workflow import score_outputs
from medwb.tasks.corpus import heldout_prompts
from medwb.backends.protocol import ProbeResult, ProbeSpec, Record, Variant
from medwb.sysinfo import default_threads


# ---------------------------------------------------------------- quality

# A random-weight model's text means nothing, but whether a route decodes it as PyTorch FP32
# does is still the route's correctness: its greedy tokens on the held-out prompts, this many.
SPEED_ONLY_AGREEMENT_TOKENS = 16


def quality_cases(n: int, speed_only: bool = False, model_dir=None) -> list[dict]:
    """The first ``n`` held-out cases of each workflow, with the prompt (through the model's
    own chat template; the demo model's without ``model_dir``) and token budget
    (``speed_only``: SPEED_ONLY_AGREEMENT_TOKENS, for agreement with FP32 alone)."""
    from medwb.models import chat
    from medwb.tasks import corpus, prompts
    from medwb.models.demo_model import RECIPE
    out = []
    for task in corpus.TASKS:
        for rec in corpus.load_records(task, limit=n):
            prompt = chat.chat_prompts(model_dir, [rec["input"]])[0] if model_dir else \
                prompts.user_turn(rec["input"])
            out.append({"task": task, "prompt": prompt,
                        "target": rec["target"], "disease": rec["case"]["disease"],
                        "budget": SPEED_ONLY_AGREEMENT_TOKENS if speed_only else RECIPE["eval"]["max_new_tokens"][task]})
    return out


# ---------------------------------------------------------------- running

_KV_TYPE_BYTES = {"float32": 4, "f32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "f16": 2, "uint8_t": 1, "u8": 1}


def _kv_bytes(v: Variant, result: ProbeResult) -> float:
    """Bytes per KV-cache element: what the compiled model reports, else the backend's."""
    kv = (result.get("compiled_properties") or {}).get("KV_CACHE_PRECISION", "")
    m = re.search(r"'(\w+)'", kv)
    if m and m[1] in _KV_TYPE_BYTES:
        return _KV_TYPE_BYTES[m[1]]
    return registry.get(v["backend"]).kv_element_bytes(v["precision"])


def weights_read_per_token(art: dict, size: float, shape) -> tuple[float, str]:
    """Bytes a token reads and where the figure comes from: every weight once, the input
    embedding table one row (a tied table whole, as the output layer). From the artifact's own
    tensor table where the backend reads it (GGUF: each tensor in the type the file keeps it);
    otherwise ``size`` scaled by the family's share of weights read per token
    (medwb.models.architectures)."""
    if art.get("weights_read_bytes") is not None:
        return art["weights_read_bytes"], "the artifact's tensor table"
    return size * shape.read_share, f"size x the weights a {shape.family} token reads ({shape.read_share:.3f})"


def records_for(v: Variant, art: dict, result: ProbeResult, reference: ProbeResult | None, cases: list[dict],
                ctx: dict) -> list[Record]:
    """One record per token pair (or one error record)."""
    cfg_model = model_config(ctx["model_dir"])
    base = {"variant": label(v), "base_variant": base_label(v), "knobs": knobs.set_in(v),
            "export_settings": art.get("export_settings"),
            "weights": v.get("weights"), "model": str(ctx["model_dir"]),
            "speed_only": ctx["speed_only"], "threads": v.get("threads", ctx["threads"]), "size_bytes": art.get("bytes"),
            "export_s": art.get("export_s"), "bandwidth_read_gb_s": ctx["bandwidth"]["read_gb_s"],
            "cpu": ctx["cpu"], "run_id": ctx["run_id"]}
    entry = registry.get(v["backend"])
    family, route = entry.family, entry.route
    base.update(weight_bits=entry.weight_bits(v), peer=entry.peer)
    if "error" in result:
        return [variant_record(family, route, v["precision"], result, None, **base)]
    size = result.get("saved_bytes") or art.get("bytes") or 0
    base["size_bytes"] = size
    shape = architectures.shape(cfg_model)
    weights_read, basis = weights_read_per_token(art, size, shape)
    kv_elem = _kv_bytes(v, result)
    compute = compute_fields(shape, result)
    qual = None
    if cases and result.get("texts") and not ctx["speed_only"]:  # random weights: agreement only
        qual = score_outputs(result["texts"], cases, reference.get("texts") if reference else None)
    records = []
    for pair in result.get("pairs", []):
        pair_result = {**result, **{k: x for k, x in pair.items() if k not in ("input_tokens", "output_tokens")}}
        rec = variant_record(family, route, v["precision"], pair_result,
                             reference if reference is not result else None,
                             input_tokens=pair["input_tokens"], output_tokens=pair["output_tokens"], **base)
        if weights_read is not None:
            kv_read = shape.kv_bytes_per_token(pair["input_tokens"] + pair["output_tokens"] / 2, kv_elem)
            floor = bandwidth.decode_floor_ms(weights_read, kv_read, ctx["bandwidth"]["read_gb_s"])
            rec.update(weights_read_bytes=int(weights_read), floor_basis=basis, kv_read_bytes=int(kv_read),
                       kv_bytes_per_element=kv_elem,
                       decode_floor_ms=round(floor, 4),
                       pct_of_limit=round(100 * floor / rec["tpot_ms"], 1) if rec.get("tpot_ms") else None)
        if compute:  # the roofline: the larger floor binds, and pct_of_limit is against it
            rec.update(compute, **roofline.limit(rec.get("decode_floor_ms"), compute.get("compute_floor_ms"),
                                                 rec.get("tpot_ms")))
        builds = sorted(set((result.get("kernel_builds") or {}).values()))
        rec["kernel_build"] = pair.get("kernel_build") or ",".join(builds) or None
        known = entry.kernels_label(rec["kernel_build"])  # e.g. bigdl's own ISA build of its kernels
        if known:
            rec["kernels"] = known
        if qual:
            rec["quality"] = qual
        records.append(rec)
    return records


def compute_fields(shape, result: ProbeResult) -> dict:
    """The compute floor's fields of a record from the probe's kernel timings (or why there
    is none); empty when the kernel was not probed."""
    if result.get("kernel_probe_error"):
        return {"compute_floor_error": result["kernel_probe_error"]}
    if not result.get("kernel_times"):
        return {}
    fits = roofline.fit(result["kernel_times"])
    floor = roofline.compute_floor_ms(shape.matmuls(), fits)
    if floor is None:
        return {"compute_floor_error": "the kernel's timings gave no positive cost per weight (noise): rerun on "
                                       "an idle machine", "kernel_fit": fits}
    return {"compute_floor_ms": round(floor, 4), "kernel_fit": fits}


def run(cfg: dict, run_dir=None, log=print, progress: bool = True) -> list[Record]:
    """Validate, measure bandwidth, prepare artifacts, then every variant in a fresh process.
    ``run_dir`` empty: a new ``runs/<timestamp>``, made only once the config is valid.
    Records are rewritten after every variant (JSON lines and CSV), so a run cut short
    keeps what it measured. On a Ray cluster the same matrix is ``medwb.cluster.bench.run``
    (``medwb.jobs.bench`` chooses)."""
    from tqdm.auto import tqdm

    from medwb import runner, sysinfo
    checked = validate(cfg)
    if run_dir:  # before any work: a run that cannot write its records is refused now
        from medwb.paths import check_writable_dir
        check_writable_dir(run_dir, "--run-dir")
    model_dir = checked["model_dir"]
    threads = cfg["threads"] or default_threads()
    cfg = {**cfg, "threads": threads, "variants": checked["variants"]}
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
           "cpu": {"model": cpu["model"], "flags": sysinfo.isa_flags()},
           "run_id": run_dir.name}
    arts = prepare(model_dir, cfg["variants"], cfg, log)
    cases = quality_cases(cfg["quality_cases"], checked["speed_only"], model_dir) if cfg["quality_cases"] else []
    pair_prompt = cases[0]["prompt"] if cases else heldout_prompts(1)[0]
    matching = matching_kernel_build(cfg)
    records: list[dict] = [{"record_type": "run", "created": now(), "config": cfg, "model": str(model_dir),
                            "run_dir": str(run_dir),
                            "speed_only": checked["speed_only"], "bandwidth": bw, "cpu": ctx["cpu"],
                            "machine_load": load,
                            "python": sys.version.split()[0]}]
    for name, why in checked["left_out"].items():  # a record each: the matrix says why it did not run
        log(f"{name}: not run: {why}")
        records += records_for(parse_variants(name)[0], {}, {"error": f"not run: {why}"}, None, [], ctx)
    bar = tqdm(total=len(cfg["variants"]) * cfg["rounds"], desc="bench", unit="variant", disable=not progress)
    current = {"round": 0}  # quality is answered in the first round only
    kernels: dict[str, dict] = {}  # the first round's kernel timings, for every round's floors

    def measure(v: Variant, reference: ProbeResult | None) -> tuple[list[Record], ProbeResult]:
        bar.set_postfix_str(label(v))
        art, started = arts[label(v)], time.perf_counter()
        # quality cases and the compute floor's kernel probe in the first round only
        spec = probe_spec(v, art, cfg, threads, pair_prompt, [] if current["round"] else cases, matching,
                          None if current["round"] else model_dir)
        result, side = measure_variant(v, art, spec, cfg, threads)
        probed = {k: result[k] for k in ("kernel_times", "kernel_probe_error") if k in result}
        if current["round"] == 0:
            kernels[label(v)] = probed
        elif "error" not in result:
            result = {**result, **kernels.get(label(v), {})}
        if v is ref and "error" not in result:
            reference = result  # its own row: agreement left out, ROUGE-L vs itself
        new = records_for(v, art, result, reference, cases, ctx)
        attach_side(new, side)
        for r in new:
            r["wall_s"] = round(time.perf_counter() - started, 1)
            if cfg["rounds"] > 1:
                r["round"] = current["round"]
        records.extend(new)
        if "error" in result:
            log(f"{label(v)} failed: {result['error']}")
        write(records, run_dir)
        bar.update()
        return new, result

    # The FP32 variant (PyTorch, or the family's stand-in: registry.reference_for), when
    # listed, runs first: the reference for agreement.
    reference = registry.reference_for(model_dir)
    ref = next((v for v in cfg["variants"] if registry.is_reference(v, reference)), None)
    for current["round"] in range(cfg["rounds"]):
        against_reference(ref, [v for v in cfg["variants"] if v is not ref], measure)
    bar.close()
    return records


def matching_kernel_build(cfg: dict) -> str | None:
    """The bigdl kernel build matching this CPU's flags, when a variant asks for "match"
    (asked in the bigdl environment); None otherwise or without that environment."""
    kb = cfg.get("kernel_build") or None
    tuned = {registry.get(v["backend"]).env for v in cfg["variants"] if registry.get(v["backend"]).kernel_builds}
    if not tuned or "match" not in [v.get("kernel_build", kb) for v in cfg["variants"]]:
        return None
    env = tuned.pop()  # the bigdl environment: its kernel builds match this CPU's flags
    return None if not envs.available(env) else envs.query_json(
        env, ["-c", "from medwb.backends.toolchain import bigdl_kernels; from medwb.child import write_result; "
              "write_result(bigdl_kernels.matching_build())"])


def probe_spec(v: Variant, art: dict, cfg: dict, threads: int, pair_prompt: str, cases: list[dict],
               matching: str | None, model_dir: Path | None = None) -> ProbeSpec:
    """What one variant's probe is asked: the variant's own knobs (the backend fills in the
    defaults), its artifact, the token pairs, and the quality cases (none: speed only)."""
    spec = load_spec(v, art, threads, cfg.get("kernel_build") or None)
    if spec["kernel_build"] == "match":
        spec["kernel_build"] = matching
    if cfg.get("compute_floor") and model_dir:  # the runtime's kernel on slices of this model's matrices
        bits = registry.get(v["backend"]).weight_bits(v) or 32
        spec["kernel_plan"] = roofline.plan(architectures.shape(model_config(model_dir)).matmuls(), bits / 8)
    # The artifact's own spec keys stay last, as load_spec leaves them.
    return {**spec, "token_pairs": cfg["token_pairs"], "pair_prompt": pair_prompt, "trials": cfg["trials"],
            "prompts": [c["prompt"] for c in cases], "prompt_budgets": [c["budget"] for c in cases],
            "logits": False, **art.get("spec", {})}


def measure_variant(v: Variant, art: dict, spec: ProbeSpec, cfg: dict, threads: int) -> tuple[ProbeResult, list | dict | None]:
    """The probe's result in a fresh process (or the artifact's error), and, with
    ``concurrent`` > 1, the side-by-side measurement (None when not asked)."""
    entry = registry.get(v["backend"])
    result = {"error": art["error"]} if "error" in art else run_probe(
        spec, python=str(envs.python_of(entry.env)), timeout=cfg["timeout_s"], env=entry.process_env(spec))
    side = None
    if cfg["concurrent"] > 1 and "error" not in result:
        side = side_by_side(v, spec, cfg["concurrent"], v.get("threads", threads), cfg["timeout_s"])
    return result, side


def attach_side(records: list[Record], side) -> None:
    """The side-by-side figures into each token pair's record (one dict: its error)."""
    if side is None:
        return
    for i, rec in enumerate(records):
        rec["concurrent"] = side[i] if isinstance(side, list) else side


def side_by_side(v: Variant, spec: ProbeSpec, n: int, threads: int, timeout_s: int) -> list[dict] | dict:
    """``n`` copies of one variant in separate processes, decoding each token pair at the
    same time (a barrier before each pair), the cores shared out as the app's workers do:
    per pair, every copy's next-token latency and the aggregate tokens/s. A dict with
    ``error`` when it could not be measured."""
    import statistics
    import tempfile
    from concurrent.futures import ThreadPoolExecutor

    entry = registry.get(v["backend"])
    if entry.measures_itself:
        return {"n": n, "error": f"{entry.name} runs a one-shot native tool per call: not timed side by side"}
    each = max(1, threads // n)  # as medwb.apps.workers.split_threads shares the cores out
    with tempfile.TemporaryDirectory(prefix="medwb-side-by-side-") as folder:
        copy = {**spec, "threads": each, "prompts": [], "prompt_budgets": [], "kernel_plan": None,
                "barrier": {"dir": folder, "n": n, "timeout_s": timeout_s}}
        python, env = str(envs.python_of(entry.env)), entry.process_env(copy)
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda _: run_probe(copy, python=python, timeout=timeout_s, env=env), range(n)))
    failed = [r["error"] for r in results if "error" in r]
    if failed:
        return {"n": n, "threads_each": each, "error": failed[0]}
    out = []
    for i in range(len(results[0]["pairs"])):
        tpots = [r["pairs"][i]["tpot_ms"] for r in results]
        out.append({"n": n, "threads_each": each, "tpot_ms_each": tpots, "tpot_ms_max": max(tpots),
                    "tpot_ms_median": round(statistics.median(tpots), 4),
                    "ttft_ms_max": max(r["pairs"][i]["ttft_ms"] for r in results),
                    "aggregate_tok_s": round(sum(1e3 / t for t in tpots), 2),
                    "peak_rss_mb_each": [r.get("peak_rss_mb") for r in results],
                    "machine_load": results[0].get("machine_load")})
    return out


def write(records: list[Record], run_dir) -> dict[str, Path]:
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


def load(run_dir) -> list[Record]:
    return jsonl.read(Path(run_dir) / "records" / "bench.jsonl")


TABLE_COLUMNS = ["server", "variant", "round", "tokens", "load_s", "ttft_ms", "tpot_ms", "tok_s", "floor_ms", "compute_floor_ms", "binding", "pct_of_limit",
                 "side_by_side_n", "tpot_side_by_side_ms", "side_by_side_tok_s",
                 "peak_rss_MB", "size_MB", "kernels", "exact_vs_fp32", "first_diff", "rougeL_vs_fp32", "dx_top3",
                 "dc_complete", "error"]


def table(records: list[dict]):
    """The readable table: one row per variant and token pair (and round, when repeated)."""
    rounds = any(r.get("round") for r in records)
    servers = any(r.get("server") for r in records)  # a cluster run: one row per server kind too
    return records_table(records, [c for c in TABLE_COLUMNS
                                   if (c != "round" or rounds) and (c != "server" or servers)])
