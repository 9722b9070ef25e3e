"""Measurements shared by every backend: per-token timing, peak memory, prompt length.

Speed and memory are recorded, never asserted: the numbers go into JSON records.
"""
from __future__ import annotations

import os
import resource
import subprocess
import threading
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
    hwm = _vm_hwm_kb(os.getpid())
    return hwm / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def exact_length(ids: list[int], n: int) -> list[int]:
    """The prompt's ids cut, or repeated after its first token (BOS), to exactly ``n``."""
    if n <= len(ids):
        return ids[:n]
    body = ids[1:] or ids
    out = list(ids)
    while len(out) < n:
        out += body[: n - len(out)]
    return out


def run_tracking_peak_rss(cmd: list[str], timeout: float, env=None, poll_s: float = 0.05,
                          errors: str = "replace"):
    """Run ``cmd`` like subprocess.run(capture_output=True, text=True) and also return the
    peak RSS (MB) of it and its descendants, from their VmHWM (polled; VmHWM only grows, so
    polling loses at most the last interval). ``ru_maxrss`` of children would not do: it
    includes what they inherited from this process at fork."""
    import psutil
    # errors="replace": a model can stop in the middle of a multi-byte character
    # ("surrogateescape" keeps such bytes for a caller that repairs them)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors=errors,
                            env=env, stdin=subprocess.DEVNULL)
    peak: dict[int, int] = {}
    done = threading.Event()

    def poll():
        while not done.is_set():
            try:
                for p in [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True):
                    hwm = _vm_hwm_kb(p.pid)
                    if hwm:
                        peak[p.pid] = max(peak.get(p.pid, 0), hwm)
            except psutil.Error:
                pass
            done.wait(poll_s)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    finally:
        done.set()
        watcher.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), max(peak.values(), default=0) / 1024


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def seconds_per_call(call, budget_s: float = 0.15, blocks: int = 5) -> float:
    """The fastest of ``blocks`` block means of ``call()`` (after a warm-up), each block about
    ``budget_s / blocks`` long: a kernel's cost per call with the machine's noise mostly out.
    The compute-floor probes' timer (``medwb.bench.roofline``)."""
    for _ in range(3):
        call()
    t = time.perf_counter()
    call()
    once = max(time.perf_counter() - t, 1e-7)
    reps = max(1, int(budget_s / blocks / once))
    best = float("inf")
    for _ in range(blocks):
        t = time.perf_counter()
        for _ in range(reps):
            call()
        best = min(best, (time.perf_counter() - t) / reps)
    return best
