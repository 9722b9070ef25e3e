"""Measure one variant in a fresh process: ``python -m medwb.probe SPEC.json`` prints one
JSON line. Every route and the comparison benchmark use it, in whichever environment the
backend needs (bigdl in ``.venvs/bigdl``, OpenVINO and PyTorch in ``.venvs/main``).

A fresh process per variant keeps peak-RSS figures clean (the FP32-sized peak of
quantizing on load would otherwise hide a low-bit folder's smaller one), lets a bigdl
kernel-build override take effect before bigdl loads its libraries, and means one crash
ends one variant, not the run.

Spec keys: backend (see BACKENDS), model_path, precision, threads, and optionally
kv_cache_precision, kernel_build, save_to, timing_prompt, input_tokens (the timing
prompt cut or repeated to exactly that many tokens), max_new_tokens (timing; forced
length), trials, prompts and agreement_new_tokens (greedy outputs for agreement),
runtime_graph (list the compiled graph's layer types; OpenVINO optimum only).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from medwb import measure
from medwb.backends.bigdl import CPU_LOW_BITS

# backend -> precisions it takes
BACKENDS = {
    "pytorch": ("fp32", "bf16"),
    "bigdl": CPU_LOW_BITS,
    "openvino-optimum": ("f32", "bf16"),
    "openvino-genai": ("f32", "bf16"),
    "bigdl-cli": ("int4", "int8"),
}
# Imported before the load timer starts, so load_s is loading and compiling, not imports.
BACKEND_IMPORTS = {"pytorch": ("torch", "transformers"), "bigdl": ("torch", "transformers", "bigdl.llm.transformers"),
                   "openvino-optimum": ("torch", "transformers", "optimum.intel"),
                   "openvino-genai": ("openvino", "openvino_genai")}
# Which environment runs which backend.
BACKEND_ENV = {"pytorch": "main", "bigdl": "bigdl", "bigdl-cli": "bigdl", "openvino-optimum": "main",
               "openvino-genai": "main"}


def load_backend(spec: dict):
    backend, path, precision = spec["backend"], spec["model_path"], spec["precision"]
    threads, kv = spec.get("threads"), spec.get("kv_cache_precision")
    if backend == "pytorch":
        from medwb.backends.pytorch import PyTorchBackend
        return PyTorchBackend.load(path, {"fp32": "float32", "bf16": "bfloat16"}[precision], threads)
    if backend == "bigdl":
        from medwb.backends.bigdl import BigDLBackend
        return BigDLBackend.load(path, precision, threads)
    if backend == "openvino-optimum":
        from medwb.backends.openvino import OptimumOVBackend
        return OptimumOVBackend.load(path, precision, kv, threads)
    if backend == "openvino-genai":
        from medwb.backends.openvino_genai import GenAIBackend
        return GenAIBackend.load(path, precision, kv, threads)
    from medwb.errors import MedwbError
    raise MedwbError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")


def exact_length(ids: list[int], n: int) -> list[int]:
    """The prompt's ids cut, or repeated after its first token (BOS), to exactly ``n``."""
    if n <= len(ids):
        return ids[:n]
    body = ids[1:] or ids
    out = list(ids)
    while len(out) < n:
        out += body[: n - len(out)]
    return out


def probe(spec: dict) -> dict:
    import medwb  # noqa: F401  (offline switches before any HF/OpenVINO import)
    from medwb import bigdl_kernels

    if spec["backend"] == "bigdl-cli":
        return probe_cli(spec)
    if spec.get("kernel_build"):
        bigdl_kernels.use_build(spec["kernel_build"])
    from medwb import sysinfo
    load = sysinfo.machine_load()  # our parent (the notebook or bench) is left out
    started = time.perf_counter()
    for module in BACKEND_IMPORTS.get(spec["backend"], ()):
        importlib.import_module(module)
    import_s = time.perf_counter() - started
    rss_before = measure.current_rss_mb()
    started = time.perf_counter()
    backend = load_backend(spec)
    result = {"load_s": round(time.perf_counter() - started, 3), "import_s": round(import_s, 3),
              "rss_mb_before_load": round(rss_before, 1),
              "peak_rss_mb_load": round(measure.peak_rss_mb(), 1), "describe": backend.describe(),
              "machine_load": load}
    if spec.get("save_to"):
        backend.save_low_bit(spec["save_to"])
        result["saved_bytes"] = measure.dir_size_bytes(spec["save_to"])
    if hasattr(backend, "compiled_properties"):
        result["compiled_properties"] = backend.compiled_properties()
    if spec.get("runtime_graph") and hasattr(backend, "runtime_layer_types"):
        result["runtime_layer_types"] = backend.runtime_layer_types()

    n_new = spec.get("max_new_tokens", 32)
    if spec.get("timing_prompt") or spec.get("input_tokens"):
        ids = backend.encode(spec.get("timing_prompt") or spec["prompts"][0])
        if spec.get("input_tokens"):
            ids = exact_length(ids, spec["input_tokens"])
        result.update(timed(backend, ids, n_new, spec.get("trials", 1)))
    if spec.get("token_pairs"):
        base = backend.encode(spec["pair_prompt"])
        result["pairs"] = [{"input_tokens": n_in, "output_tokens": n_out,
                            **timed(backend, exact_length(base, n_in), n_out, spec.get("trials", 1))}
                           for n_in, n_out in spec["token_pairs"]]

    outputs, last_logits = [], []
    budgets = spec.get("prompt_budgets") or [spec.get("agreement_new_tokens", n_new)] * len(spec.get("prompts", []))
    for prompt, budget in zip(spec.get("prompts", []), budgets):
        ids = backend.encode(prompt)
        outputs.append(backend.generate_ids(ids, budget))
        last_logits.append(backend.last_token_logits(ids) if spec.get("logits", True) else None)
    peak = measure.peak_rss_mb()  # before kernels(): genai's check compiles a second copy
    if hasattr(backend, "kernels"):  # after inference: OpenVINO picks its kernels at the first one
        result["kernels"] = backend.kernels()
    result.update(output_ids=outputs, last_logits=last_logits,
                  texts=[backend.decode(o) for o in outputs],
                  peak_rss_mb=round(peak, 1), rss_increase_mb=round(peak - rss_before, 1),
                  kernel_builds=bigdl_kernels.loaded_builds())
    return result


def probe_cli(spec: dict) -> dict:
    """llm-cli on a native file (bigdl env), converted first if the file is not there yet.

    Every run is a fresh llm-cli process; times are llm-cli's own (llama.cpp) timings, which
    exclude loading: first token = prompt evaluation, next token = eval time per token.
    Prompts go in as text: llm-cli tokenizes them itself (adding a space and BOS), so the
    input length is read back from its timings rather than assumed.
    """
    from medwb import bigdl_native
    from medwb.backends.pytorch import load_tokenizer
    family, precision = "llama", spec["precision"]
    native = Path(spec["native_dir"]) / f"bigdl_llm_{family}_{'q4_0' if precision == 'int4' else 'q8_0'}.bin"
    from medwb import sysinfo
    result: dict = {"describe": {"backend": "bigdl-cli", "precision": precision, "model_dir": spec["model_path"],
                                 "bigdl_llm": importlib.metadata.version("bigdl-llm")},
                    "machine_load": sysinfo.machine_load()}
    if not native.exists():
        conv = bigdl_native.convert(spec["model_path"], spec["native_dir"], family, precision)
        result.update(convert_s=conv["seconds"], convert_command=conv["command"])
    result["saved_bytes"] = native.stat().st_size
    tok = load_tokenizer(spec["model_path"])
    kb, threads = spec.get("kernel_build"), spec["threads"]

    def cli(text: str, n: int, ignore_eos: bool) -> dict:
        return bigdl_native.run_cli(native, family, text, threads, n, kernel_build=kb, ignore_eos=ignore_eos)

    peaks, pairs = [], []
    base = tok(spec["pair_prompt"])["input_ids"] if spec.get("token_pairs") else []
    for n_in, n_out in spec.get("token_pairs", []):
        # BOS dropped: llm-cli adds its own.
        text = tok.decode(exact_length(base, n_in)[1:], skip_special_tokens=True)
        runs = [cli(text, n_out, True) for _ in range(spec.get("trials", 1))]
        peaks += [r["peak_rss_mb"] for r in runs]
        ttfts = [r["timings"]["prompt_eval_time_ms"] for r in runs]
        tpots = [r["timings"]["eval_time_ms"] / r["timings"]["eval_time_count"] for r in runs]
        t = runs[-1]["timings"]
        pairs.append({"input_tokens": n_in, "output_tokens": n_out, "ttft_ms": round(statistics.median(ttfts), 3),
                      "tpot_ms": round(statistics.median(tpots), 4), "ttft_ms_trials": ttfts,
                      "tpot_ms_trials": [round(x, 4) for x in tpots],
                      "throughput_tok_s": round(1e3 / statistics.median(tpots), 2),
                      "n_prompt_tokens": t.get("prompt_eval_time_count"), "n_new_tokens": t.get("eval_time_count", 0) + 1,
                      "trials": len(runs), "timing": "llm-cli timings (llama.cpp)", "load_s": t.get("load_time_ms", 0) / 1e3,
                      "kernel_build": runs[-1]["kernel_build"],
                      "output_md5": hashlib.md5(runs[-1]["text"].encode("utf-8")).hexdigest()})
    result["pairs"] = pairs
    budgets = spec.get("prompt_budgets") or [spec.get("agreement_new_tokens", 32)] * len(spec.get("prompts", []))
    texts = []
    for prompt, budget in zip(spec.get("prompts", []), budgets):
        r = cli(prompt, budget, False)
        peaks.append(r["peak_rss_mb"])
        texts.append(r["text"])
        result.setdefault("kernel_build", r["kernel_build"])
    result.update(texts=texts, output_ids=[tok(t, add_special_tokens=False)["input_ids"] for t in texts],
                  last_logits=[None] * len(texts), peak_rss_mb=max(peaks, default=None),
                  load_s=pairs[0]["load_s"] if pairs else None,
                  kernel_builds={family: result.get("kernel_build") or (pairs[0]["kernel_build"] if pairs else None)})
    return result


def timed(backend, ids: list[int], n_new: int, trials: int) -> dict:
    """Median first-token and next-token latency over ``trials`` forced-length greedy runs,
    after one untimed warm-up run (first-inference allocations and kernel selection)."""
    backend.timed_generate(ids, 2)
    runs = [backend.timed_generate(ids, n_new) for _ in range(trials)]
    ttfts = [r["ttft_ms"] for r in runs]
    tpots = [r["tpot_ms"] for r in runs if r["tpot_ms"] is not None]
    tpot = statistics.median(tpots) if tpots else None
    text = backend.decode(runs[-1]["output_ids"])
    return {"ttft_ms": round(statistics.median(ttfts), 3), "tpot_ms": round(tpot, 4) if tpot else None,
            "ttft_ms_trials": [round(t, 3) for t in ttfts], "tpot_ms_trials": [round(t, 4) for t in tpots],
            "throughput_tok_s": round(1e3 / tpot, 2) if tpot else None, "n_prompt_tokens": len(ids),
            "n_new_tokens": runs[-1]["n_new_tokens"], "trials": len(runs), "timing": runs[-1]["timing"],
            "output_md5": hashlib.md5(text.encode("utf-8")).hexdigest()}


def agreement(result: dict, reference: dict) -> dict:
    """Greedy-token agreement with the reference's outputs on the same prompts (and the
    last-token logit cosine where both backends expose logits)."""
    pairs = list(zip(result["output_ids"], reference["output_ids"]))
    out = {"n_prompts": len(pairs),
           "exact_match_rate": round(sum(a == b for a, b in pairs) / len(pairs), 4),
           "prefix_agreement": round(sum(measure.prefix_agreement(a, b) for a, b in pairs) / len(pairs), 4)}
    logits = [(u, v) for u, v in zip(result.get("last_logits", []), reference.get("last_logits", []))
              if u is not None and v is not None]
    if logits:
        out["last_token_logit_cosine"] = round(min(measure.cosine(u, v) for u, v in logits), 6)
    return out


def run_probe(spec: dict, python: str | None = None, timeout: float = 900) -> dict:
    """One variant in a fresh interpreter (``python``: this one by default); a failure or
    a timeout becomes the result's ``error`` field instead of an exception."""
    from medwb import child
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    try:
        return child.run([python or sys.executable, "-m", "medwb.probe", f.name], timeout=timeout,
                         what="probe")
    except child.ChildError as e:
        # The record keeps the child's own words (its last stderr line), not our wrapper.
        return {"error": e.reason.removeprefix("failed: ")}
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    from medwb.child import write_result
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    write_result(probe(spec))
