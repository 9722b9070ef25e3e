"""Measurements shared by every backend: per-token timing, peak memory, agreement.

Speed and memory are recorded, never asserted: the numbers go into JSON records.
"""
from __future__ import annotations

import os
import resource
import time


class TimingStreamer:
    """A transformers streamer that timestamps every generated token.

    ``generate`` calls ``put`` once with the prompt, then once per new token, so the first
    token latency (prefill + one step) and the per-token latency after it come out
    directly instead of from two separate runs.
    """

    def __init__(self):
        self.start = None
        self.times: list[float] = []
        self._prompt_seen = False

    def put(self, value):
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self.times.append(time.perf_counter())

    def end(self):
        pass

    def begin(self):
        self.start, self.times, self._prompt_seen = time.perf_counter(), [], False

    @property
    def ttft_ms(self) -> float | None:
        return (self.times[0] - self.start) * 1e3 if self.times else None

    @property
    def tpot_ms(self) -> float | None:
        """Mean latency of the 2nd and later tokens."""
        if len(self.times) < 2:
            return None
        return (self.times[-1] - self.times[0]) * 1e3 / (len(self.times) - 1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space so far (VmHWM).

    Not ``ru_maxrss``: Linux carries that over from the parent across fork and exec, so a
    probe started from a 700 MB notebook kernel would report at least 700 MB.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def dir_size_bytes(path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def prefix_agreement(a: list[int], b: list[int]) -> float:
    """Share of the reference's tokens reproduced before the first difference."""
    if not b:
        return 1.0 if not a else 0.0
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n / len(b)


def cosine(u, v) -> float:
    import numpy as np
    u, v = np.asarray(u, dtype=np.float64).ravel(), np.asarray(v, dtype=np.float64).ravel()
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))
