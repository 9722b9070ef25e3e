"""The OpenVINO route, end to end, for notebook 02 (main env).

Validates every parameter before anything is written, exports one IR per weight format
(``medwb.backends.toolchain.openvino_export``), then measures every IR under both runtimes, and a stateless
export beside the stateful one, each in a fresh process (``medwb.bench.probe``). Records go to
``<run_dir>/records/openvino.jsonl`` in the shared format.
"""
from __future__ import annotations

import types
from pathlib import Path

from medwb.backends.toolchain import openvino_export as oe
from medwb.backends import registry
from medwb.backends.openvino import KV_CACHE_PRECISIONS, PRECISIONS
from medwb.tasks.corpus import heldout_prompts
from medwb.errors import MedwbError
from medwb.paths import checkpoint_bytes, check_model_dir, check_writable_dir
from medwb.bench.probe import against_reference, run_probe
from medwb.bench.records import table as records_table, variant_record
from medwb.sysinfo import default_threads

RUNTIMES = ("openvino-optimum", "openvino-genai")
# The layer types that show the fusions in the compiled graph.
FUSED = ("ScaledDotProductAttention", "RoPE", "RMS", "MemoryInput", "MemoryOutput", "Concatenation",
         "Subgraph")


def prepare(model_path, weight_formats, int4_group_size, int4_sym, inference_precision,
            kv_cache_precision, out_dir, threads, prompt, run_dir, n_prompts: int = 8, max_new_tokens: int = 32,
            trials: int = 3, stateless_input_tokens: int = 1024) -> types.SimpleNamespace:
    """Resolve the notebook's parameters (defaults: the demo model, all cores, a held-out
    case) and reject bad ones with a message naming the parameter, before any writing."""
    from medwb.errors import check_count
    from medwb.models import demo_model
    for name, value in (("n_prompts", n_prompts), ("max_new_tokens", max_new_tokens), ("trials", trials),
                        ("stateless_input_tokens", stateless_input_tokens)):
        check_count(name, value)
    check_count("threads", threads, 0, "0: all cores")
    model_dir = check_model_dir(model_path, "model_path") if model_path else demo_model.ensure()
    if isinstance(weight_formats, str) or not weight_formats:
        raise MedwbError("weight_formats must be a non-empty list, e.g. ['fp16', 'int8', 'int4']")
    for wf in weight_formats:
        if wf not in oe.WEIGHT_FORMATS:
            raise MedwbError(f"weight_formats: {wf!r} is unknown; use {', '.join(oe.WEIGHT_FORMATS)}")
    group = None
    if "int4" in weight_formats:
        group = (oe.check_group_size(model_dir, int(int4_group_size)) if int4_group_size
                 else oe.default_group_size(model_dir))
    if inference_precision not in PRECISIONS:
        raise MedwbError(f"inference_precision {inference_precision!r} is not supported on CPU: "
                         f"use {' or '.join(PRECISIONS)}")
    if kv_cache_precision and kv_cache_precision not in KV_CACHE_PRECISIONS:
        raise MedwbError(f"kv_cache_precision {kv_cache_precision!r} is unknown; use one of "
                         f"{KV_CACHE_PRECISIONS} or empty for the plugin's default")
    threads = threads or default_threads()
    if not isinstance(threads, int) or threads < 1:
        raise MedwbError(f"threads must be a positive integer, got {threads!r}")
    out = Path(out_dir) if out_dir else (Path(run_dir) / "openvino" if run_dir else Path("openvino_out"))
    check_writable_dir(out, "out_dir")
    memory = oe.check_memory(model_dir)
    return types.SimpleNamespace(
        model_dir=model_dir, weight_formats=list(weight_formats), int4_group_size=group,
        int4_sym=oe.INT4_DEFAULTS["int4_sym"] if int4_sym is None else bool(int4_sym),
        inference_precision=inference_precision,
        kv_cache_precision=kv_cache_precision or None, out_dir=out, threads=threads,
        prompt=prompt or heldout_prompts(1)[0], run_dir=run_dir, memory=memory)


def export_all(cfg, log=print) -> dict[str, dict]:
    """One stateful IR per weight format in ``<out_dir>/<format>``; complete ones are reused,
    partial ones rebuilt (saying what was missing)."""
    manifests = {}
    for wf in cfg.weight_formats:
        ir_dir = cfg.out_dir / wf
        missing = _missing(ir_dir)
        if ir_dir.exists() and missing:
            log(f"{ir_dir} is incomplete (missing {', '.join(missing)}): rebuilding it")
        manifests[wf] = oe.export(cfg.model_dir, ir_dir, wf, cfg.int4_group_size, cfg.int4_sym)
        m = manifests[wf]
        how = "reused complete IR" if m["skipped"] else f"exported in {m['export_s']} s"
        log(f"{wf}: {how}, "
            f"{m['ir_bytes'] / 1e6:.1f} MB, weights {m['weight_element_types']}\n  $ {m['command']}")
    return manifests


def _missing(ir_dir: Path) -> list[str]:
    return [f for f in oe.IR_FILES + (oe.MANIFEST,) if not (ir_dir / f).exists()]


def _spec(cfg, backend: str, model_path, precision: str, prompts: list[str], max_new_tokens: int,
          **extra) -> dict:
    return {"backend": backend, "model_path": str(model_path), "precision": precision,
            "kv_cache_precision": cfg.kv_cache_precision, "threads": cfg.threads,
            "timing_prompt": cfg.prompt, "max_new_tokens": max_new_tokens, "prompts": prompts, **extra}


def measure_variants(cfg, manifests: dict, n_prompts: int = 8, max_new_tokens: int = 32,
                     trials: int = 3, log=print) -> list[dict]:
    """FP32 PyTorch reference, then every IR under both runtimes, one fresh process each."""
    prompts = heldout_prompts(n_prompts)
    ckpt = checkpoint_bytes(cfg.model_dir)

    def measure(item, reference: dict | None) -> tuple[list[dict], dict]:
        if item is registry.REFERENCE:
            log("FP32 PyTorch reference ...")
            result = run_probe(_spec(cfg, item["backend"], cfg.model_dir, item["precision"], prompts,
                                     max_new_tokens, trials=trials))
            return [variant_record("pytorch", "pytorch", "fp32", result, None, model_path=str(cfg.model_dir),
                                   weight_format="fp32 checkpoint", size_bytes=ckpt, threads=cfg.threads)], result
        wf, runtime = item
        log(f"{wf} IR on {runtime} at {cfg.inference_precision} ...")
        result = run_probe(_spec(cfg, runtime, cfg.out_dir / wf, cfg.inference_precision, prompts,
                                 max_new_tokens, trials=trials))
        rec = variant_record("openvino", runtime, f"{wf}/{cfg.inference_precision}", result, reference,
                             model_path=str(cfg.out_dir / wf), weight_format=wf,
                             inference_precision=cfg.inference_precision,
                             kv_cache_precision=cfg.kv_cache_precision, stateful=True,
                             size_bytes=manifests[wf]["ir_bytes"], export_s=manifests[wf]["export_s"],
                             threads=cfg.threads)
        if "error" in rec:
            log(f"  failed: {rec['error']}")
        return [rec], result

    return against_reference(registry.REFERENCE, [(wf, rt) for wf in manifests for rt in RUNTIMES], measure)


def stateless_comparison(cfg, weight_format: str, input_tokens: int = 1024, max_new_tokens: int = 64,
                         trials: int = 3, log=print) -> list[dict]:
    """The same weights exported stateful and stateless, measured one after the other in
    fresh processes on a long prompt, where copying the KV cache in and out of every step
    (stateless) costs most. Also lists the compiled graph's layer types for both."""
    stateless_dir = cfg.out_dir / f"{weight_format}-stateless"
    m = oe.export(cfg.model_dir, stateless_dir, weight_format,
                  cfg.int4_group_size if weight_format == "int4" else None, cfg.int4_sym, stateful=False)
    how = "reused" if m["skipped"] else f"exported in {m['export_s']} s"
    log(f"stateless {weight_format}: {how}\n"
        f"  $ {m['command']}")
    records = []
    for stateful, path in ((True, cfg.out_dir / weight_format), (False, stateless_dir)):
        spec = _spec(cfg, "openvino-optimum", path, cfg.inference_precision, [], max_new_tokens,
                     input_tokens=input_tokens, trials=trials, runtime_graph=True)
        log(f"{'stateful' if stateful else 'stateless'} {weight_format}, {input_tokens}-token prompt ...")
        result = run_probe(spec)
        records.append(variant_record("openvino", "openvino-optimum", f"{weight_format}/{cfg.inference_precision}",
                                      result, None, model_path=str(path), weight_format=weight_format,
                                      stateful=stateful, experiment="stateful-vs-stateless",
                                      inference_precision=cfg.inference_precision, threads=cfg.threads,
                                      state=oe.state_summary(path) if not result.get("error") else None))
    return records


def stateful_table(records: list[dict]):
    """Stateful vs stateless side by side: latency, memory, KV inputs, fused layers."""
    import pandas as pd
    rows = {}
    for r in records:
        col = "stateful" if r["stateful"] else "stateless"
        layers = r.get("runtime_layer_types") or {}
        state = r.get("state") or {}
        rows[col] = {"prompt tokens": r.get("n_prompt_tokens"), "first token (ms)": r.get("ttft_ms"),
                     "next token (ms/token)": r.get("tpot_ms"), "peak RSS (MB)": r.get("peak_rss_mb"),
                     "model inputs": len(state.get("inputs", [])),
                     "ReadValue/Assign": f"{state.get('ReadValue')}/{state.get('Assign')}",
                     **{f"runtime {k}": layers.get(k, 0) for k in FUSED}, "error": r.get("error", "")}
    df = pd.DataFrame(rows)
    if {"stateful", "stateless"} <= set(df.columns) and df.loc["next token (ms/token)"].notna().all():
        df["stateless / stateful"] = [
            round(b / a, 2) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a else None
            for a, b in zip(df["stateful"], df["stateless"])]
    return df


def stateful_findings(records: list[dict]) -> str:
    """The comparison in one sentence, from the measured numbers."""
    by = {r["stateful"]: r for r in records if not r.get("error")}
    if len(by) < 2:
        return "the comparison is incomplete: " + "; ".join(r["error"] for r in records if r.get("error"))
    sf, sl = by[True], by[False]
    return (f"With a {sf['n_prompt_tokens']}-token prompt, the stateless IR needs "
            f"{sl['tpot_ms'] / sf['tpot_ms']:.2f}x the stateful IR's time per next token "
            f"({sl['tpot_ms']:.2f} vs {sf['tpot_ms']:.2f} ms), {sl['ttft_ms'] / sf['ttft_ms']:.2f}x its "
            f"first-token time, and {sl['peak_rss_mb'] / sf['peak_rss_mb']:.2f}x its peak RSS "
            f"({sl['peak_rss_mb']:.0f} vs {sf['peak_rss_mb']:.0f} MB). The stateless graph takes "
            f"{len(sl['state']['inputs'])} inputs (the KV cache goes in and out as tensors every step); "
            f"the stateful one takes {len(sf['state']['inputs'])}.")


def two_runtimes(cfg, weight_format: str, max_new_tokens: int = 48, log=print) -> dict:
    """The same IR under optimum-intel (HF generate) and openvino-genai (streamed), in this
    process: the texts side by side."""
    from medwb.backends.openvino import OptimumOVBackend
    from medwb.backends.openvino_genai import GenAIBackend
    ir_dir = cfg.out_dir / weight_format
    kw = {"inference_precision": cfg.inference_precision, "kv_cache_precision": cfg.kv_cache_precision,
          "threads": cfg.threads}
    optimum_text = OptimumOVBackend.load(ir_dir, **kw).generate([cfg.prompt], max_new_tokens)[0]
    log(f"--- optimum-intel OVModelForCausalLM.generate ({weight_format}) ---\n{optimum_text}")
    log(f"--- openvino_genai.LLMPipeline, streamed ({weight_format}) ---")
    chunks: list[str] = []

    def on_chunk(chunk: str) -> bool:
        chunks.append(chunk)
        print(chunk, end="", flush=True)
        return False  # False: keep generating

    genai_text = GenAIBackend.load(ir_dir, **kw).generate([cfg.prompt], max_new_tokens, streamer=on_chunk)[0]
    log("")
    return {"optimum": optimum_text, "genai": genai_text, "genai_chunks": len(chunks),
            "same_text": optimum_text == genai_text}


def runtime_options(cfg, ir_dir) -> "object":
    """The CPU's optimization capabilities, and for each inference precision the properties
    as requested and as the compiled model reports them back (compiled here, no inference)."""
    import openvino as ov
    import pandas as pd

    from medwb.backends.openvino import cpu_properties
    core = ov.Core()
    caps = list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    model = core.read_model(str(oe.check_ir_dir(ir_dir) / "openvino_model.xml"))
    rows = []
    for precision in PRECISIONS:
        props = cpu_properties(precision, cfg.kv_cache_precision, cfg.threads)
        compiled = core.compile_model(model, "CPU", props)
        for key in ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "INFERENCE_NUM_THREADS"):
            rows.append({"requested precision": precision, "property": key,
                         "requested": props.get(key, "(plugin default)"),
                         "compiled model reports": str(compiled.get_property(key))})
    return caps, pd.DataFrame(rows)


def table(records: list[dict]):
    """Per variant: size, export, load/compile, first/next token, peak RSS, agreement."""
    return records_table(records, ["runtime", "weights", "inference_precision", "size_MB", "export_s",
                                   "load_compile_s", "ttft_ms", "tpot_ms", "peak_rss_MB", "exact_match",
                                   "prefix_agree", "logit_cos", "error"])


def agreement_summary(records: list[dict]) -> list[str]:
    """One sentence per IR variant: how many held-out prompts gave FP32's exact tokens."""
    lines = []
    for r in records:
        a = r.get("agreement_vs_fp32")
        if a:
            n = round(a["exact_match_rate"] * a["n_prompts"])
            lines.append(f"{r['weight_format']} IR on {r['route']} at {r['inference_precision']}: "
                         f"{n}/{a['n_prompts']} prompts give exactly FP32 PyTorch's greedy tokens "
                         f"(prefix agreement {a['prefix_agreement']:.2f})")
        elif r.get("error"):
            lines.append(f"{r.get('weight_format')} IR on {r['route']}: failed: {r['error']}")
    return lines
