"""The one way a child process loads a backend: the benchmark's probe, the evaluation's
worker and the app workers all call :func:`load_in_child`.

Order matters and is kept here once: MedWB's offline switches before any HF/OpenVINO import,
then bigdl's per-ISA kernel library chosen before bigdl loads its native code, then the
backend's heavy imports (timed apart from loading), then the load itself.
"""
from __future__ import annotations

import importlib
import time
from typing import Callable, NamedTuple

from medwb.backends import registry
from medwb.backends.protocol import ProbeSpec, Runtime


class Loaded(NamedTuple):
    runtime: Runtime
    entry: registry.Backend
    kernel_build: str | None   # the bigdl kernel build in use (None: not a bigdl backend)
    import_s: float
    load_s: float


def use_kernel_build(entry: registry.Backend, requested: str | None) -> str | None:
    """Select bigdl's kernel library for this process ("match": the one built for this CPU)
    before bigdl is imported; None for a backend without kernel builds."""
    if not entry.kernel_builds or not requested:
        return None
    from medwb.backends.toolchain import bigdl_kernels
    build = bigdl_kernels.matching_build() if requested == "match" else requested
    bigdl_kernels.use_build(build, package=entry.kernel_package)
    return build


def prepare_child(spec: ProbeSpec) -> tuple[registry.Backend, str | None]:
    """Everything before the load: offline switches, the registry entry, the kernel build."""
    import medwb  # noqa: F401  (offline switches before any HF/OpenVINO import)
    entry = registry.get(spec["backend"])
    return entry, use_kernel_build(entry, spec.get("kernel_build"))


def load_in_child(spec: ProbeSpec, after_imports: Callable[[], object] | None = None) -> Loaded:
    """The runtime for ``spec``, with the seconds spent importing and loading it;
    ``after_imports`` runs between the two (the probe reads the memory before loading there)."""
    entry, build = prepare_child(spec)
    started = time.perf_counter()
    for module in entry.imports:
        importlib.import_module(module)
    import_s = time.perf_counter() - started
    if after_imports is not None:
        after_imports()
    started = time.perf_counter()
    runtime = entry.load({**spec, "kernel_build": build})
    return Loaded(runtime, entry, build, import_s, time.perf_counter() - started)
