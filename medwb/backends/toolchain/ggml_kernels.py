"""ggml's matrix-vector kernel, timed for the compute floor (``medwb.bench.roofline``).

llama-cpp-python binds llama.h only; the kernels live in the ggml libraries it ships beside
libllama (libggml-base, libggml-cpu). Their C API for a graph on the CPU is small and stable
(ggml_init, ggml_new_tensor_2d, ggml_mul_mat, ggml_graph_plan, ggml_graph_compute), so it is called
here through ctypes: weights quantized by ggml itself (ggml_quantize_chunk) in the variant's
type, a float activation that ggml quantizes per call as llama.cpp's decode does, and the
thread count of the variant. Runs in the llamacpp environment.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

from medwb.errors import MedwbError


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


class _Cplan(ctypes.Structure):  # ggml-cpu.h's struct ggml_cplan
    _fields_ = [("work_size", ctypes.c_size_t), ("work_data", ctypes.c_void_p), ("n_threads", ctypes.c_int),
                ("threadpool", ctypes.c_void_p), ("abort_callback", ctypes.c_void_p),
                ("abort_callback_data", ctypes.c_void_p), ("use_ref", ctypes.c_bool)]


def _libs():
    import llama_cpp
    libdir = Path(llama_cpp.__file__).parent / "lib"
    try:
        base, cpu = ctypes.CDLL(str(libdir / "libggml-base.so")), ctypes.CDLL(str(libdir / "libggml-cpu.so"))
    except OSError as e:
        raise MedwbError(f"ggml's libraries are not beside llama-cpp-python's ({e})") from None
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    for fn, res, args in (("ggml_init", vp, [_InitParams]), ("ggml_new_tensor_2d", vp, [vp, ctypes.c_int, i64, i64]),
                          ("ggml_mul_mat", vp, [vp, vp, vp]), ("ggml_new_graph", vp, [vp]),
                          ("ggml_build_forward_expand", None, [vp, vp]), ("ggml_get_data", vp, [vp]),
                          ("ggml_free", None, [vp]), ("ggml_row_size", ctypes.c_size_t, [ctypes.c_int, i64]),
                          ("ggml_tensor_overhead", ctypes.c_size_t, []), ("ggml_graph_overhead", ctypes.c_size_t, []),
                          ("ggml_quantize_chunk", ctypes.c_size_t, [ctypes.c_int, vp, vp, i64, i64, i64, vp])):
        f = getattr(base, fn)
        f.restype, f.argtypes = res, args
    cpu.ggml_graph_plan.restype, cpu.ggml_graph_plan.argtypes = _Cplan, [vp, ctypes.c_int, vp]
    cpu.ggml_graph_compute.argtypes = [vp, ctypes.POINTER(_Cplan)]
    cpu.ggml_cpu_init()
    return base, cpu


def ggml_type(precision: str) -> int:
    import llama_cpp
    t = getattr(llama_cpp, f"GGML_TYPE_{precision.upper()}", None)
    if t is None:
        raise MedwbError(f"no ggml type for llama.cpp precision {precision!r}")
    return t


def kernel_times(plan: list[dict], precision: str, threads: int) -> list[dict]:
    """Per ``plan`` entry (k, n, r): seconds per graph call of r products of one k-vector, each
    with its own k x n weights of ``precision``'s type (cache-resident together)."""
    import numpy as np

    from medwb.backends.measure import seconds_per_call
    base, cpu = _libs()
    typ, rng, out = ggml_type(precision), np.random.default_rng(0), []
    for p in plan:
        k, n, r = p["k"], p["n"], p["r"]
        # The pool holds every tensor (its header and data, aligned) and the graph: a pool too
        # small aborts the process (GGML_ABORT), so it is sized from ggml's own overheads.
        tensors = 1 + 2 * r
        size = (r * (base.ggml_row_size(typ, k) * n + 4 * (k + n)) + tensors * (base.ggml_tensor_overhead() + 64)
                + base.ggml_graph_overhead() + 2**20)
        ctx = base.ggml_init(_InitParams(size, None, False))
        try:
            graph = base.ggml_new_graph(ctx)
            x = base.ggml_new_tensor_2d(ctx, 0, k, 1)  # GGML_TYPE_F32
            act = rng.standard_normal(k).astype(np.float32)
            ctypes.memmove(base.ggml_get_data(x), act.ctypes.data, act.nbytes)
            for _ in range(r):
                w = base.ggml_new_tensor_2d(ctx, typ, k, n)
                src = (rng.standard_normal(k * n) * 0.02).astype(np.float32)
                base.ggml_quantize_chunk(typ, src.ctypes.data, base.ggml_get_data(w), 0, n, k, None)
                base.ggml_build_forward_expand(graph, base.ggml_mul_mat(ctx, w, x))
            # Our own work buffer (the activation quantized to the kernel's dot-product type):
            # ggml_graph_compute_with_ctx would take a new one from the pool at every call.
            plan = cpu.ggml_graph_plan(graph, threads, None)
            work = ctypes.create_string_buffer(max(1, plan.work_size))
            plan.work_data = ctypes.cast(work, ctypes.c_void_p)
            out.append({**p, "s": seconds_per_call(lambda g=graph, c=plan: cpu.ggml_graph_compute(g, ctypes.byref(c)))})
        finally:
            base.ggml_free(ctx)
    return out
