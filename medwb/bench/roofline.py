"""The decode limit's two ceilings, and which one binds a record.

- **Bandwidth floor** (``medwb.bench.bandwidth``): the bytes one token reads over the
  measured read bandwidth. It binds where the cores can do the arithmetic faster than memory
  delivers the weights.
- **Compute floor** (here): the time the variant's own kernels need for one token's
  multiply-adds when memory is not the limit. With two cores and 30-60 GB/s, a kernel that
  dequantizes and multiplies more slowly than memory streams can be the bound instead, and
  then "% of the bandwidth floor" says little.

The compute floor is measured, not taken from a datasheet: the runtime's own matrix-vector
kernel (OpenVINO's CPU plugin, ggml for llama.cpp), with the variant's weight format and
thread count, is timed on slices of the model's matrices small enough to stay in the
caches (``SLICE_BYTES``). Two differences remove what is not the kernel's work per weight:

1. per slice, R = 1 and R = 8 products of one activation in one call, each with its own
   weights (the 8 slices together still in the caches): the slope over R drops the per-call
   cost (an inference request, a graph launch) that a real token pays once, and 8 products
   stand well out of its noise. Shared weights would not do: OpenVINO stops fusing the
   decompression into its kernel when one weight feeds many products;
2. per inner dimension K, two slice widths n (the narrower half the wider, both at least 2
   row blocks per thread, as a real matrix splits): ``t(K, n) = a + b * K * n`` gives the
   cost per matrix ``a`` (quantizing the activation, handing work to the threads) and per
   weight ``b``.

The floor is the sum over the token's matrices (``Shape.matmuls``) of ``a + b * K * N``.
Attention over the KV cache, norms and sampling are left out: it is a floor. The floor that
binds is the larger of the two, and a record's ``pct_of_limit`` is that floor over its
measured next-token time. A compute floor more than ``ABOVE_MEASURED`` above the measured
time bounds nothing (the kernel alone ran slower than inside the model: a noisy machine, or
a runtime that picks another kernel for a slice): the record keeps it, says so, and the
bandwidth floor binds.
"""
from __future__ import annotations

# Weights per slice: 8 slices take 1.5 MiB, each core holding its half (768 KiB) within its
# L2 on the CPUs this project meets (1-2 MiB per core). The narrowest wide slice is 128 rows,
# so a wide K (TinyLlama's 5632, int4) takes more and reaches into L3, still far faster than
# memory.
SLICE_BYTES = 192 * 1024
REPEATS = (1, 8)
# Slice widths are multiples of this (kernels block their outputs by 16 or 32); the wide
# slice is at least 4 blocks, 2 per thread on two cores.
ROW_BLOCK = 32
# Timing noise on a shared 2-core VM: a compute floor up to this much above the measured
# next-token time is taken as "at the floor"; beyond it, as not bounding.
ABOVE_MEASURED = 1.10


def plan(matmuls: list[tuple[int, int, int]], bytes_per_weight: float,
         slice_bytes: int = SLICE_BYTES) -> list[dict]:
    """What to time: per distinct K, two slice widths (the wider fills ``slice_bytes``, the
    narrower half of it), each at R in ``REPEATS``. The per-weight cost does not depend on
    the model's own N, so the widths need not be the model's. ``matmuls``: (K, N, count) per
    token."""
    out = []
    for k in sorted({k for k, _, _ in matmuls}):
        hi = max(4 * ROW_BLOCK, int(slice_bytes / (k * bytes_per_weight)) // (2 * ROW_BLOCK) * 2 * ROW_BLOCK)
        for n in (hi // 2, hi):
            out += [{"k": k, "n": n, "r": r} for r in REPEATS]
    return out


def fit(times: list[dict]) -> dict[int, dict]:
    """Per K, the cost per matrix (us) and per weight (ns) from ``plan``'s timings (each
    entry: k, n, r and ``s``, seconds per call). Where the two widths give no positive
    difference (a runtime that picks another kernel for the narrower slice, or noise), the
    wider slice's whole cost is spread over its weights (``method`` says which); a K whose
    products took no time at all is left out."""
    per_slice: dict[tuple[int, int], dict[int, float]] = {}
    for t in times:
        per_slice.setdefault((t["k"], t["n"]), {})[t["r"]] = t["s"]
    slices: dict[int, dict[int, float]] = {}
    lo_r, hi_r = REPEATS
    for (k, n), by_r in per_slice.items():
        if lo_r in by_r and hi_r in by_r:
            slices.setdefault(k, {})[n] = (by_r[hi_r] - by_r[lo_r]) / (hi_r - lo_r)
    out = {}
    for k, by_n in slices.items():
        if len(by_n) < 2:
            continue
        n1, n2 = sorted(by_n)[:2]
        per_weight, method = (by_n[n2] - by_n[n1]) / (k * (n2 - n1)), "two widths"
        if per_weight <= 0:
            per_weight, method = by_n[n2] / (k * n2), "widest slice"
        if per_weight <= 0:
            continue
        per_matrix = max(0.0, by_n[n1] - per_weight * k * n1) if method == "two widths" else 0.0
        out[k] = {"per_matrix_us": round(per_matrix * 1e6, 3), "ns_per_weight": round(per_weight * 1e9, 6),
                  "method": method}
    return out


def compute_floor_ms(matmuls: list[tuple[int, int, int]], fits: dict[int, dict]) -> float | None:
    """One token's multiply-adds at the fitted costs; None if a K was not fitted."""
    total_us = 0.0
    for k, n, count in matmuls:
        f = fits.get(k)
        if f is None:
            return None
        total_us += count * (f["per_matrix_us"] + f["ns_per_weight"] * 1e-3 * k * n)
    return total_us / 1e3


def bounds(compute_floor_ms_: float | None, tpot_ms: float | None) -> bool:
    """Whether a compute floor can bound this measurement (see ``ABOVE_MEASURED``)."""
    return bool(compute_floor_ms_) and (not tpot_ms or compute_floor_ms_ <= ABOVE_MEASURED * tpot_ms)


def limit(bandwidth_floor_ms: float | None, compute_floor_ms_: float | None, tpot_ms: float | None) -> dict:
    """The binding floor (the larger of the two; a compute floor that does not ``bounds`` the
    measurement is left out, and ``compute_floor_error`` says why), and the next-token time's
    percentage of it."""
    bound = bounds(compute_floor_ms_, tpot_ms)
    floors = {"bandwidth": bandwidth_floor_ms, "compute": compute_floor_ms_ if bound else None}
    known = {k: v for k, v in floors.items() if v}
    if not known:
        return {}
    binding = max(known, key=known.get)
    out = {"binding_floor": binding, "limit_ms": round(known[binding], 4),
           "pct_of_limit": round(100 * known[binding] / tpot_ms, 1) if tpot_ms else None}
    if compute_floor_ms_ and not bound:
        out["compute_floor_error"] = (f"the kernels' floor ({compute_floor_ms_:.2f} ms) is above the measured "
                                      f"{tpot_ms:.2f} ms/token: it bounds nothing here (the kernel alone ran "
                                      "slower than in the model)")
    return out
