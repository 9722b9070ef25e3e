"""What this server is, and what that means for each deployment route.

Run as ``python -m medwb.sysinfo`` in either environment to print a JSON report; the
environment-check notebook calls it in the bigdl env from the main kernel.
"""
from __future__ import annotations

import os
import sys

# CPU flags that decide which kernels the routes can use (Linux /proc/cpuinfo names).
ISA_FEATURES = [
    ("avx2", "AVX2", "baseline SIMD for every CPU kernel in bigdl and OpenVINO"),
    ("avx512f", "AVX-512", "wider SIMD: faster FP32 and low-bit kernels (bigdl's AVX-512 build)"),
    ("avx512_vnni", "AVX512_VNNI", "INT8 dot products: OpenVINO INT8 and bigdl INT4/INT8 matmuls"),
    ("avx_vnni", "AVX-VNNI", "256-bit VNNI on client cores"),
    ("avx512_bf16", "AVX512_BF16", "native BF16: OpenVINO defaults to bf16 inference precision"),
    ("amx_tile", "AMX", "4th-gen Xeon matrix tiles: large BF16/INT8 speedups in prefill"),
    ("amx_bf16", "AMX_BF16", "AMX for BF16 matmuls"),
    ("amx_int8", "AMX_INT8", "AMX for INT8 matmuls"),
]

MAIN_PACKAGES = ["torch", "transformers", "tokenizers", "openvino", "openvino-tokenizers",
                 "openvino-genai", "optimum", "optimum-intel", "nncf", "papermill", "ipywidgets"]
BIGDL_PACKAGES = ["torch", "transformers", "tokenizers", "bigdl-llm", "accelerate",
                  "langchain", "pydantic", "numpy"]


def cpu_flags() -> set[str]:
    """The CPU's flags (the one place medwb reads them)."""
    return set(_cpuinfo_field("flags").split())


def isa_flags() -> list[str]:
    """The CPU's flags among ``ISA_FEATURES`` (what records keep beside every figure)."""
    return sorted(cpu_flags() & {f for f, _, _ in ISA_FEATURES})


def _cpuinfo_field(name: str) -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu() -> dict:
    import platform

    import psutil
    mem = psutil.virtual_memory()
    return {
        "model": _cpuinfo_field("model name") or platform.processor(),
        "vendor": _cpuinfo_field("vendor_id"),
        "architecture": platform.machine(),
        "logical_cores": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_total_gib": round(mem.total / 2**30, 1),
        "memory_available_gib": round(mem.available / 2**30, 1),
    }


RAM_CAP_ENV = "MEDWB_MAX_RAM_GB"
THREADS_ENV = "MEDWB_THREADS"


def default_threads() -> int:
    """Threads a model process (or a conversion) uses when none is asked for: every core, or
    ``MEDWB_THREADS`` when it is set (a server shared with other services; a test run that
    runs two tests at once, where two OpenMP pools of every core would collapse). A thread
    count given explicitly (a variant's ``threads``, ``--threads``) is used as given."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        from medwb.errors import MedwbError
        raise MedwbError(f"{THREADS_ENV}={raw!r}: give a whole number of threads, 1 or more, e.g. {THREADS_ENV}=4 "
                         "(or unset it to use every core)")
    return int(raw)


def ram_available() -> tuple[int, str]:
    """Bytes MedWB may plan to use, and where the figure comes from: the memory available
    now, or less when ``MEDWB_MAX_RAM_GB`` caps it (a server shared with other services)."""
    import psutil

    from medwb.errors import MedwbError
    have = psutil.virtual_memory().available
    cap = os.environ.get(RAM_CAP_ENV, "").strip()
    if not cap:
        return have, "available"
    try:
        cap_bytes = int(float(cap) * 2**30)
    except ValueError:
        raise MedwbError(f"{RAM_CAP_ENV}={cap!r}: give a number of GiB, e.g. {RAM_CAP_ENV}=16") from None
    return (cap_bytes, f"allowed by {RAM_CAP_ENV}") if cap_bytes < have else (have, "available")


def check_ram(need: int, doing: str, basis: str, fix: str) -> dict:
    """Refuse ``doing`` before it starts when its estimate ``need`` (bytes; ``basis`` says how
    it was estimated) exceeds the RAM available: one line with both figures and ``fix``."""
    from medwb.errors import MedwbError
    have, source = ram_available()
    if need > have:
        raise MedwbError(f"{doing} needs about {need / 2**30:.1f} GiB of RAM ({basis}) but {have / 2**30:.1f} "
                         f"GiB is {source}: not started; {fix}")
    return {"estimated_bytes": int(need), "available_bytes": int(have), "basis": basis}


def machine_load(interval_s: float = 0.5, busy_percent: float = 30.0) -> dict:
    """How busy this machine is right now, for anything that times or trains.

    OpenMP pools (torch, bigdl, OpenVINO) spin-wait for a thread whose core is taken: one
    busy process beside a 2-thread job made it 5-40x slower here. Other processes using
    more than ``busy_percent`` of a core over ``interval_s`` are listed; ``quiet`` is False
    when there is any, or when the 1-minute load average exceeds half the cores.
    """
    import time

    import psutil
    mine = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    mine |= {p.pid for p in psutil.Process().parents()}
    procs = []
    for p in psutil.process_iter(["pid", "name"]):
        if p.info["pid"] in mine:
            continue
        try:
            p.cpu_percent(None)
            procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    time.sleep(interval_s)
    busy = []
    for p in procs:
        try:
            pct = p.cpu_percent(None)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if pct >= busy_percent:
            busy.append({"pid": p.info["pid"], "name": p.info["name"], "cpu_percent": round(pct, 1)})
    cores = os.cpu_count() or 1
    load1 = os.getloadavg()[0]
    quiet = not busy and load1 <= max(0.5, cores / 2)
    return {"loadavg_1m": round(load1, 2), "cores": cores, "quiet": quiet,
            "busy_processes": sorted(busy, key=lambda b: -b["cpu_percent"])}


def load_warning(load: dict) -> str | None:
    """One line to show before timing on a machine that is not quiet, else None."""
    if load["quiet"]:
        return None
    who = ", ".join(f"{b['name']} (pid {b['pid']}, {b['cpu_percent']:.0f}% CPU)"
                    for b in load["busy_processes"][:3]) or "no single process"
    return (f"warning: the machine is not quiet (load average {load['loadavg_1m']} on {load['cores']} "
            f"cores; busy: {who}): timings will be slower than this CPU can do; the load is stored "
            "with every record")


def check_load(log=print, **kwargs) -> dict:
    """``machine_load()``, warning through ``log`` when the machine is busy."""
    load = machine_load(**kwargs)
    warning = load_warning(load)
    if warning:
        log(warning)
    return load


def isa_features(flags: set[str] | None = None) -> list[dict]:
    flags = cpu_flags() if flags is None else flags
    return [{"feature": label, "present": flag in flags, "why_it_matters": why}
            for flag, label, why in ISA_FEATURES]


def versions(packages: list[str]) -> dict:
    import importlib.metadata  # here, not at the top: every command and backend imports this module
    out = {"python": sys.version.split()[0]}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def openvino_capabilities() -> dict:
    """What OpenVINO's CPU plugin itself reports (main env only)."""
    try:
        import openvino as ov
        core = ov.Core()
        return {"OPTIMIZATION_CAPABILITIES": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
                "INFERENCE_PRECISION_HINT": str(core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
                "FULL_DEVICE_NAME": core.get_property("CPU", "FULL_DEVICE_NAME")}
    except Exception as e:  # reported, not fatal: the notebook shows the reason
        return {"error": f"{type(e).__name__}: {e}"}


def route_notes(info_cpu: dict, features: list[dict]) -> list[str]:
    """Plain-language consequences for the routes that follow."""
    has = {f["feature"]: f["present"] for f in features}
    notes = []
    if not has["AVX2"]:
        notes.append("No AVX2: neither bigdl-llm nor OpenVINO will run at useful speed here.")
    if info_cpu.get("vendor") != "GenuineIntel" and has["AVX-512"]:
        notes.append(f"Vendor is {info_cpu.get('vendor') or 'unknown'}, not GenuineIntel: bigdl-llm "
                     "chooses its native library by vendor string and is expected to load its "
                     "plain-AVX build even though this CPU has AVX-512; the quantization notebook "
                     "reports which build was really loaded.")
    if has["AVX512_VNNI"] or has["AVX-VNNI"]:
        notes.append("VNNI present: INT8/INT4 weight kernels (bigdl sym_int4, OpenVINO int8/int4) "
                     "have native dot-product instructions.")
    if has["AMX"]:
        notes.append("AMX present: BF16/INT8 prefill (first token) gets matrix-unit speedups, as in "
                     "the case study's 4th-gen Xeon.")
    else:
        notes.append("No AMX: BF16/INT8 run on AVX-512/AVX2 units; the first-token gains of the "
                     "case study's 4th-gen Xeon will be smaller here.")
    if has["AVX512_BF16"] or has["AMX_BF16"]:
        notes.append("Native BF16: OpenVINO's CPU plugin defaults to bf16 inference precision; ask "
                     "for f32 explicitly when an exact FP32 reference is needed.")
    notes.append("Decode (next token) is memory-bandwidth bound: smaller weights (INT8/INT4) "
                 "mean fewer bytes per token, so low-bit variants decode faster on any CPU.")
    return notes


def report(env: str = "main") -> dict:
    from medwb import offline
    info = cpu()
    feats = isa_features()
    out = {"env": env, "cpu": info, "isa_features": feats, "route_notes": route_notes(info, feats),
           "versions": versions(MAIN_PACKAGES if env == "main" else BIGDL_PACKAGES),
           "offline": offline.status(), "executable": sys.executable}
    if env == "main":
        out["openvino_cpu"] = openvino_capabilities()
    return out


def bigdl_report() -> dict:
    """The bigdl environment's report, queried from the main environment.

    Returns {"error": ...} instead of raising when that environment is missing or broken,
    so the environment check still shows everything else.
    """
    from medwb import envs
    from medwb.errors import MedwbError
    try:
        return envs.query_json("bigdl", ["-m", "medwb.sysinfo", "--env", "bigdl"], timeout=180)
    except (MedwbError, OSError, ValueError) as e:
        return {"error": str(e)}


# --- notebook views ------------------------------------------------------------------
def cpu_table(rep: dict):
    import pandas as pd
    return pd.DataFrame(list(rep["cpu"].items()), columns=["property", "value"]).set_index("property")


def features_table(rep: dict):
    import pandas as pd
    pd.set_option("display.max_colwidth", 200)  # the explanations are the point of this table
    return pd.DataFrame(rep["isa_features"]).set_index("feature")


def versions_table(rep: dict, bigdl: dict | None):
    """Package versions side by side: main env vs bigdl env."""
    import pandas as pd
    bigdl_versions = (bigdl or {}).get("versions", {})
    names = list(dict.fromkeys(list(rep["versions"]) + list(bigdl_versions)))
    rows = [{"package": n, "main env": rep["versions"].get(n, "-") or "not installed",
             "bigdl env": bigdl_versions.get(n, "-") or "not installed"} for n in names]
    return pd.DataFrame(rows).set_index("package")


def save(rep: dict, bigdl: dict | None, run_dir: str | os.PathLike | None) -> str | None:
    """Write environment.json into the run folder (the benchmark records cite it)."""
    if not run_dir:
        return None
    from pathlib import Path

    from medwb.paths import write_json_atomic
    path = Path(run_dir) / "environment.json"
    write_json_atomic(path, {"main": rep, "bigdl": bigdl})
    return str(path)


if __name__ == "__main__":
    import argparse
    import medwb  # noqa: F401  (offline switches)
    parser = argparse.ArgumentParser(description="Print this machine's MedWB environment report.")
    parser.add_argument("--env", choices=["main", "bigdl"], default="main")
    args = parser.parse_args()
    from medwb.child import write_result
    write_result(report(args.env))
