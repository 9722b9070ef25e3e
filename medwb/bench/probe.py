"""Measure one variant in a fresh process: ``python -m medwb.bench.probe SPEC.json`` prints one
JSON line. Every route and the comparison benchmark use it, in whichever environment the
backend needs (bigdl in ``.venvs/bigdl``, OpenVINO and PyTorch in ``.venvs/main``).

A fresh process per variant keeps peak-RSS figures clean (the FP32-sized peak of
quantizing on load would otherwise hide a low-bit folder's smaller one), lets a bigdl
kernel-build override take effect before bigdl loads its libraries, and means one crash
ends one variant, not the run.

Spec keys: backend (a name in medwb.backends.registry), model_path, precision, threads, and optionally
the variant's knobs (medwb.backends.knobs: kv_cache_precision, ...; the backend fills in
defaults), kernel_build, save_to, timing_prompt, input_tokens (the timing
prompt cut or repeated to exactly that many tokens), max_new_tokens (timing; forced
length), trials, prompts and agreement_new_tokens (greedy outputs for agreement),
runtime_graph (list the compiled graph's layer types; OpenVINO optimum only), barrier (a
side-by-side measurement: {dir, n}, see ``barrier``), kernel_plan (the runtime's kernel timed
for the compute floor: ``medwb.bench.roofline.plan``).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import tempfile
import time

from medwb.backends import registry
from medwb.backends import measure
from medwb.paths import dir_size_bytes
from medwb.backends.protocol import ProbeResult, ProbeSpec

def probe(spec: ProbeSpec) -> ProbeResult:
    from medwb import sysinfo
    from medwb.backends.loader import load_in_child
    from medwb.backends.toolchain import bigdl_kernels

    entry = registry.get(spec["backend"])
    measured_itself = entry.probe(spec)
    if measured_itself is not None:
        return measured_itself
    load = sysinfo.machine_load()  # our parent (the notebook or bench) is left out
    before: list[float] = []  # the memory once imports are done, before the model loads
    loaded = load_in_child(spec, after_imports=lambda: before.append(measure.current_rss_mb()))
    backend, rss_before = loaded.runtime, before[0]
    result = {"load_s": round(loaded.load_s, 3), "import_s": round(loaded.import_s, 3),
              "process_env": {k: os.environ.get(k) for k in ("LD_PRELOAD", "OMP_NUM_THREADS", "MALLOC_CONF")},
              "rss_mb_before_load": round(rss_before, 1),
              "peak_rss_mb_load": round(measure.peak_rss_mb(), 1), "describe": backend.describe(),
              "machine_load": load}
    if spec.get("save_to"):
        backend.save_low_bit(spec["save_to"])
        result["saved_bytes"] = dir_size_bytes(spec["save_to"])
    if hasattr(backend, "compiled_properties"):
        result["compiled_properties"] = backend.compiled_properties()
    if spec.get("runtime_graph") and hasattr(backend, "runtime_layer_types"):
        result["runtime_layer_types"] = backend.runtime_layer_types()

    n_new = spec.get("max_new_tokens", 32)
    if spec.get("timing_prompt") or spec.get("input_tokens"):
        ids = backend.encode(spec.get("timing_prompt") or spec["prompts"][0])
        if spec.get("input_tokens"):
            ids = measure.exact_length(ids, spec["input_tokens"])
        result.update(timed(backend, ids, n_new, spec.get("trials", 1)))
    if spec.get("token_pairs"):
        base = backend.encode(spec["pair_prompt"])
        result["pairs"] = []
        for i, (n_in, n_out) in enumerate(spec["token_pairs"]):
            barrier(spec.get("barrier"), f"pair{i}")
            result["pairs"].append({"input_tokens": n_in, "output_tokens": n_out,
                                    **timed(backend, measure.exact_length(base, n_in), n_out, spec.get("trials", 1))})

    if spec.get("kernel_plan"):
        result.update(kernel_probe(backend, spec["kernel_plan"]))

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


def kernel_probe(backend, plan: list[dict]) -> dict:
    """The runtime's kernel timed on cache-resident slices for the compute floor
    (medwb.bench.roofline), or why it is not: a record keeps either."""
    from medwb.errors import MedwbError
    if not hasattr(backend, "kernel_times"):
        return {"kernel_probe_error": f"{backend.name}: its kernels cannot be called outside a model here"}
    started = time.perf_counter()
    try:
        times = backend.kernel_times(plan)
    except MedwbError as e:
        return {"kernel_probe_error": str(e)}
    except Exception as e:  # an extra measurement: its failure must not cost the variant's record
        return {"kernel_probe_error": f"the kernel probe failed: {type(e).__name__}: {e}"}
    return {"kernel_times": times, "kernel_probe_s": round(time.perf_counter() - started, 2)}


def barrier(spec: dict | None, key: str) -> None:
    """Wait until all ``spec["n"]`` processes of a side-by-side measurement reach ``key``
    (a file per process in ``spec["dir"]``), so that their timed runs overlap from the
    start: each copy loads at its own pace, then they decode together."""
    if not spec:
        return
    from pathlib import Path
    folder = Path(spec["dir"])
    (folder / f"{key}.{os.getpid()}").touch()
    deadline = time.monotonic() + spec.get("timeout_s", 900)
    while len(list(folder.glob(f"{key}.*"))) < spec["n"]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"side-by-side start: not all {spec['n']} copies reached {key} in time")
        time.sleep(0.005)


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


def run_probe(spec: ProbeSpec, python: str | None = None, timeout: float = 900, env: dict | None = None) -> ProbeResult:
    """One variant in a fresh interpreter (``python``: this one by default); ``env``: variables
    added to its environment (the backend's process knobs). A failure or a timeout becomes
    the result's ``error`` field instead of an exception."""
    from medwb import child
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    try:
        return child.run([python or sys.executable, "-m", "medwb.bench.probe", f.name], timeout=timeout,
                         what="probe", env={**os.environ, **(env or {})})
    except child.ChildError as e:
        # The record keeps the child's own words (its last stderr line), not our wrapper.
        return {"error": e.reason.removeprefix("failed: ")}
    finally:
        os.unlink(f.name)


def against_reference(reference, items, measure) -> list[dict]:
    """The one reference-then-variants loop (both routes and the benchmark): ``measure(item,
    None)`` for the reference (FP32 PyTorch) first, then ``measure(item, reference_result)``
    for each item in order; ``measure`` returns (records, probe result). A reference that
    failed, or none, leaves the items without one (no agreement figures)."""
    records, reference_result = [], None
    if reference is not None:
        records, result = measure(reference, None)
        reference_result = None if "error" in result else result
    for item in items:
        records += measure(item, reference_result)[0]
    return records


if __name__ == "__main__":
    from medwb.child import write_result
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    write_result(probe(spec))
