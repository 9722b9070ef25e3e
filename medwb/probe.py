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
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from medwb import measure

# backend -> precisions it takes (bigdl: low-bit types, checked by its backend)
BACKENDS = {
    "pytorch": ("fp32", "bf16"),
    "bigdl": ("sym_int4", "asym_int4", "sym_int5", "sym_int8"),
    "openvino-optimum": ("f32", "bf16"),
    "openvino-genai": ("f32", "bf16"),
}
# Imported before the load timer starts, so load_s is loading and compiling, not imports.
BACKEND_IMPORTS = {"pytorch": ("torch", "transformers"), "bigdl": ("torch", "transformers", "bigdl.llm.transformers"),
                   "openvino-optimum": ("torch", "transformers", "optimum.intel"),
                   "openvino-genai": ("openvino", "openvino_genai")}
# Which environment runs which backend.
BACKEND_ENV = {"pytorch": "main", "bigdl": "bigdl", "openvino-optimum": "main", "openvino-genai": "main"}


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

    if spec.get("kernel_build"):
        bigdl_kernels.use_build(spec["kernel_build"])
    started = time.perf_counter()
    for module in BACKEND_IMPORTS.get(spec["backend"], ()):
        importlib.import_module(module)
    import_s = time.perf_counter() - started
    rss_before = measure.current_rss_mb()
    started = time.perf_counter()
    backend = load_backend(spec)
    result = {"load_s": round(time.perf_counter() - started, 3), "import_s": round(import_s, 3),
              "rss_mb_before_load": round(rss_before, 1),
              "peak_rss_mb_load": round(measure.peak_rss_mb(), 1), "describe": backend.describe()}
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
        backend.timed_generate(ids, 2)  # warm-up (first-inference allocations), excluded
        trials = [backend.timed_generate(ids, n_new) for _ in range(spec.get("trials", 1))]
        ttfts = [t["ttft_ms"] for t in trials]
        tpots = [t["tpot_ms"] for t in trials if t["tpot_ms"] is not None]
        tpot = statistics.median(tpots) if tpots else None
        text = backend.decode(trials[-1]["output_ids"])
        result.update(ttft_ms=round(statistics.median(ttfts), 3), tpot_ms=round(tpot, 4) if tpot else None,
                      ttft_ms_trials=[round(t, 3) for t in ttfts], tpot_ms_trials=[round(t, 4) for t in tpots],
                      throughput_tok_s=round(1e3 / tpot, 2) if tpot else None,
                      n_prompt_tokens=len(ids), n_new_tokens=trials[-1]["n_new_tokens"],
                      trials=len(trials), timing=trials[-1]["timing"],
                      output_md5=hashlib.md5(text.encode("utf-8")).hexdigest())

    outputs, last_logits = [], []
    for prompt in spec.get("prompts", []):
        ids = backend.encode(prompt)
        outputs.append(backend.generate_ids(ids, spec.get("agreement_new_tokens", n_new)))
        last_logits.append(backend.last_token_logits(ids) if spec.get("logits", True) else None)
    result.update(output_ids=outputs, last_logits=last_logits,
                  texts=[backend.decode(o) for o in outputs],
                  peak_rss_mb=round(measure.peak_rss_mb(), 1),
                  rss_increase_mb=round(measure.peak_rss_mb() - rss_before, 1),
                  kernel_builds=bigdl_kernels.loaded_builds())
    return result


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
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    try:
        proc = subprocess.run([python or sys.executable, "-m", "medwb.probe", f.name],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    print(json.dumps(probe(spec), ensure_ascii=False))
