"""The hardware's limit for decoding: sustained memory bandwidth, and the decode floor.

Generating one token reads every weight once plus the KV cache, so on a CPU the next-token
latency cannot go below (bytes read per token) / (memory bandwidth). Every benchmark
record is reported against that floor.

Bandwidth is measured the way STREAM-like tools do, on buffers far larger than the
caches: a multithreaded sum (read-only, what decoding does) and a copy (read + write),
best of several repetitions, with the thread count the benchmark uses. torch's CPU kernels
do the work (vectorised and parallelised with its OpenMP pool); which ISA they use is
recorded with the result.
"""
from __future__ import annotations

import time


def measure(threads: int, size_mb: int = 1024, repeats: int = 5) -> dict:
    import psutil
    import torch
    size_mb = int(min(size_mb, psutil.virtual_memory().available / 2**20 / 4))
    torch.set_num_threads(threads)
    n = size_mb * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32)  # written once: pages are resident before timing
    dst = torch.empty_like(src)
    dst.copy_(src)
    read, copy = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        src.sum()
        read.append(src.numel() * 4 / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter()
        dst.copy_(src)
        copy.append(2 * src.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return {"read_gb_s": round(max(read), 2), "copy_gb_s": round(max(copy), 2), "buffer_mb": size_mb,
            "threads": threads, "repeats": repeats, "method": "torch sum (read) and copy_ (read+write), best of repeats",
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def decode_floor_ms(weight_bytes: float, kv_bytes: float, read_gb_s: float) -> float:
    return (weight_bytes + kv_bytes) / (read_gb_s * 1e9) * 1e3
