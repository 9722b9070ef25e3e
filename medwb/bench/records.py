"""The shared record format: one JSON object per line in ``<run_dir>/records/<name>.jsonl``,
one per measured variant, read by the comparison notebook."""
from __future__ import annotations

from pathlib import Path

from medwb import jsonl
from medwb.clock import now
from medwb.backends.protocol import ProbeResult, Record


def write_records(records: list[Record], run_dir, name: str) -> Path | None:
    """The whole file is written under a temp name, then renamed (never half-written)."""
    if not run_dir:
        return None
    return jsonl.write(Path(run_dir) / "records" / f"{name}.jsonl", records)


# Result fields of medwb.bench.probe copied into a record as they are.
_MEASURED = ("load_s", "import_s", "rss_mb_before_load", "peak_rss_mb_load", "peak_rss_mb", "rss_increase_mb",
             "ttft_ms", "tpot_ms", "ttft_ms_trials", "tpot_ms_trials", "throughput_tok_s", "trials",
             "timing", "n_prompt_tokens", "n_new_tokens", "output_md5", "kernel_builds", "saved_bytes",
             "compiled_properties", "runtime_layer_types", "kernels", "machine_load", "process_env")
_VERSIONS = ("torch", "transformers", "bigdl_llm", "openvino", "optimum_intel", "openvino_genai")


def variant_record(backend: str, route: str, precision: str, result: ProbeResult, reference: ProbeResult | None,
                   **extra) -> Record:
    """One variant's record from a probe result; a failed probe gives a record with its error."""
    from medwb.quality.agreement import agreement
    rec = {"record_type": "variant", "backend": backend, "route": route, "precision": precision,
           "created": now()}
    rec.update(extra)
    if "error" in result:
        rec["error"] = result["error"]
        return rec
    rec.update({k: result[k] for k in _MEASURED if k in result})
    from medwb.sysinfo import load_warning
    warning = load_warning(result["machine_load"]) if result.get("machine_load") else None
    if warning:  # shown where the figure is read (notebook or bench output), kept in the record
        print(f"{backend}:{precision}: {warning}")
    rec["versions"] = {k: v for k, v in result["describe"].items() if k in _VERSIONS}
    if result["describe"].get("load"):
        rec["load"] = result["describe"]["load"]
    if reference is not None and "error" not in reference and result.get("output_ids"):
        rec["agreement_vs_fp32"] = agreement(result, reference)
    return rec


def _agreement(key: str):
    return lambda r: (r.get("agreement_vs_fp32") or {}).get(key)


def _quality(key: str):
    return lambda r: (r.get("quality") or {}).get(key)


def _mb(r: dict):
    return round(r["size_bytes"] / 1e6, 2) if r.get("size_bytes") else None


# Every column a record table can show: its header, and how it is read from a record
# (a field name, or a function of the record).
COLUMNS = {
    "variant": "variant", "round": "round", "server": "server", "route": "route", "runtime": "route", "precision": "precision",
    "weights": "weight_format",
    "tokens": lambda r: f"{r.get('input_tokens', '?')}-{r.get('output_tokens', '?')}",
    "from": lambda r: r.get("source") or r.get("kernel_choice", ""),
    "kernel": lambda r: r.get("kernel_build") or ",".join(sorted(set((r.get("kernel_builds") or {}).values()))),
    "inference_precision": lambda r: r.get("inference_precision", r["precision"]),
    "size_MB": _mb, "export_s": "export_s", "load_s": "load_s", "load_compile_s": "load_s",
    "ttft_ms": "ttft_ms", "tpot_ms": "tpot_ms", "tok_s": "throughput_tok_s", "floor_ms": "decode_floor_ms",
    "compute_floor_ms": "compute_floor_ms", "binding": "binding_floor",
    "pct_of_limit": "pct_of_limit", "peak_rss_MB": "peak_rss_mb", "load_peak_rss_MB": "peak_rss_mb_load",
    "kernels": "kernels",
    # Measured with N copies decoding at once (bench --concurrent N): the slowest copy, and all together.
    "tpot_side_by_side_ms": lambda r: (r.get("concurrent") or {}).get("tpot_ms_max"),
    "side_by_side_tok_s": lambda r: (r.get("concurrent") or {}).get("aggregate_tok_s"),
    "side_by_side_n": lambda r: (r.get("concurrent") or {}).get("n"),
    "exact_match": _agreement("exact_match_rate"), "exact_vs_fp32": _agreement("exact_match_rate"),
    "prefix_agree": _agreement("prefix_agreement"),
    "first_diff": _agreement("first_divergence_median"), "logit_cos": _agreement("last_token_logit_cosine"),
    "rougeL_vs_fp32": _quality("rouge_l_vs_fp32"), "dx_top3": _quality("diagnosis_top3_rate"),
    "dc_complete": _quality("discharge_complete_rate"),
    "error": lambda r: r.get("error", ""),
}


def table(records: list[dict], columns: list[str]):
    """The readable table of the variant records (pandas), one row each, with ``columns``
    (names in ``COLUMNS``): the one table helper of the routes and the benchmark."""
    import pandas as pd
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise ValueError(f"unknown table column(s) {unknown}; known: {', '.join(COLUMNS)}")
    read = {c: COLUMNS[c] if callable(COLUMNS[c]) else (lambda r, k=COLUMNS[c]: r.get(k)) for c in columns}
    rows = [{c: f(r) for c, f in read.items()} for r in records if r.get("record_type", "variant") == "variant"]
    return pd.DataFrame(rows, columns=columns)
