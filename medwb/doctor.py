"""``medwb doctor``: is this machine ready for a workshop or a pilot?

What a hospital IT engineer checks on an installed (often air-gapped) server before people
arrive: both environments import their stacks, the Jupyter kernels are registered, the
shipped demo model is intact, what the CPU's features mean for the two routes, free RAM
and disk against the models planned, telemetry off, and no proxy or hub variable that
would make a library try the network. Each check is PASS, WARN or FAIL with the reason
and, for a failure, what to do; the exit status is 1 when anything fails.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from medwb import envs, offline, sysinfo
from medwb.errors import MedwbError

MAIN_IMPORTS = ("openvino", "openvino_genai", "optimum.intel", "transformers", "torch", "papermill", "ipywidgets")
BIGDL_IMPORTS = ("bigdl.llm", "transformers", "torch")
# Variables that make a library reach for the network (or say where to).
NETWORK_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
                "HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
# Rough needs of one planned model, as multiples of its FP32 checkpoint: converting it
# holds the FP32 weights and the result at once; the cache keeps IRs and low-bit folders.
RAM_FACTOR, DISK_FACTOR, GIB = 2.5, 2.0, 2**30


def _imports(python: Path, modules: tuple[str, ...]) -> tuple[bool, str]:
    code = ("import importlib, json, importlib.metadata as m; out = {}\n"
            f"for name in {list(modules)!r}:\n"
            "    try:\n"
            "        importlib.import_module(name); top = name.split('.')[0]\n"
            "        dist = {'bigdl': 'bigdl-llm', 'ipex_llm': 'ipex-llm', 'openvino_genai': 'openvino-genai', 'optimum': 'optimum-intel',\n"
            "                'llama_cpp': 'llama-cpp-python'}.get(top, top)\n"
            "        out[name] = m.version(dist)\n"
            "    except Exception as e:\n"
            "        out[name] = 'FAILED: ' + type(e).__name__ + ': ' + str(e)[:120]\n"
            "print(json.dumps(out))")
    try:
        res = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **offline.OFFLINE_ENV})
        found = json.loads(res.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        return False, f"{python} could not run ({type(e).__name__})"
    bad = {k: v for k, v in found.items() if str(v).startswith("FAILED")}
    if bad:
        return False, "; ".join(f"{k}: {v}" for k, v in bad.items())
    return True, ", ".join(f"{k} {v}" for k, v in found.items())


def _model_bytes(model: str) -> tuple[str, int]:
    from medwb.models import demo_model
    folder = demo_model.SHIPPED_DIR if model in ("", "demo") else Path(model).expanduser()
    if not folder.is_dir():
        raise MedwbError(f"model '{model}' is not a folder: give a local checkpoint folder, or 'demo'")
    weights = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    return str(folder), sum(f.stat().st_size for f in weights)


def checks(models=("demo",)) -> list[dict]:
    """Every check as {"check", "status", "detail"} (status PASS / WARN / FAIL)."""
    out = []

    def add(name, status, detail):
        out.append({"check": name, "status": status, "detail": detail})

    # bigdl-llm's successor (the families bigdl-llm 2.4 cannot load) works, but is archived
    # upstream: a working ipex environment is a warning that says so (its registry caveat).
    from medwb.backends import registry
    ipex = registry.get("ipex-llm")
    for env, modules, caveat in (("main", MAIN_IMPORTS, ""), ("bigdl", BIGDL_IMPORTS, ""),
                                 (ipex.env, ipex.imports, ipex.caveat)):
        python = envs.python_of(env)
        if not python.exists():
            add(f"{env} environment", "FAIL", f"{python} is missing: run `make setup` (inside an intranet: "
                                              "`make setup WHEELHOUSE=wheelhouse`)")
            continue
        ok, detail = _imports(python, modules)
        add(f"{env} environment", ("WARN" if caveat else "PASS") if ok else "FAIL",
            (f"{detail}; {caveat}" if caveat else detail) if ok else detail + "; reinstall it: `make clean-envs setup`")

    # The peer variant: optional (a machine without a compiler still runs both routes).
    from medwb.backends.llamacpp import unavailable
    why = unavailable()
    if why is None:
        ok, detail = _imports(envs.python_of("llamacpp"), ("llama_cpp",))
        why = None if ok else detail
    add("llama.cpp (peer variant)", "WARN" if why else "PASS",
        f"{why}; the llama.cpp benchmark variants will be error records" if why else
        "llama-cpp-python built for this CPU: the benchmark compares the routes with it")

    kernels = {}
    jupyter = envs.python_of("main").parent / "jupyter"
    if jupyter.exists():
        try:
            res = subprocess.run([str(jupyter), "kernelspec", "list", "--json"], capture_output=True, text=True,
                                 timeout=120)
            kernels = json.loads(res.stdout).get("kernelspecs", {})
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
    wanted = set(envs.KERNELS.values())
    add("Jupyter kernels", "PASS" if wanted <= set(kernels) else "FAIL",
        ", ".join(sorted(wanted & set(kernels))) + (f"; missing {', '.join(sorted(wanted - set(kernels)))}: run "
                                                    "`make setup`" if wanted - set(kernels) else ""))

    from medwb.models import demo_model
    problem = demo_model.verify(demo_model.SHIPPED_DIR, derived=False)
    add("demo model", "FAIL" if problem else "PASS",
        f"{demo_model.SHIPPED_DIR}: " + (f"{problem}; restore data/demo-model from the bundle or git" if problem
                                         else "every shipped file matches its SHA-256"))

    cpu = sysinfo.cpu()
    features = sysinfo.isa_features()
    has = [f["feature"] for f in features if f["present"]]
    add("CPU", "PASS" if "AVX2" in has else "FAIL",
        f"{cpu['model']} ({cpu['usable_cores']} usable cores, {cpu['memory_total_gib']} GiB): "
        f"{', '.join(has) or 'no AVX2: neither route runs at a useful speed'}; absent: "
        f"{', '.join(f['feature'] for f in features if not f['present']) or 'none'}")
    vnni = any(f in has for f in ("AVX512_VNNI", "AVX-VNNI"))
    add("what it means for the routes", "PASS" if vnni else "WARN",
        ("" if vnni else "no VNNI: INT8/INT4 weights still save memory and bandwidth, but their dot products "
                         "run without native instructions. ") + " ".join(sysinfo.route_notes(cpu, features)))

    need_ram = need_disk = 0
    names = []
    for model in models:
        folder, size = _model_bytes(model)
        need_ram = max(need_ram, RAM_FACTOR * size + GIB)
        need_disk += DISK_FACTOR * size
        names.append(f"{Path(folder).name} {size / GIB:.2f} GiB")
    avail = cpu["memory_available_gib"] * GIB
    add("memory", "PASS" if avail >= need_ram else "FAIL",
        f"{avail / GIB:.1f} GiB available; the planned models ({'; '.join(names)}) need about {need_ram / GIB:.1f} "
        f"GiB to convert and run ({RAM_FACTOR}x the largest FP32 checkpoint + 1 GiB)")
    from medwb.paths import cache_dir
    cache = cache_dir()
    probe = cache if cache.exists() else cache.parent if cache.parent.exists() else Path.home()
    free = shutil.disk_usage(probe).free
    need_disk += 2 * GIB
    add("disk", "PASS" if free >= need_disk else "FAIL",
        f"{free / GIB:.1f} GiB free for the medwb cache ({cache}); the planned models need about "
        f"{need_disk / GIB:.1f} GiB ({DISK_FACTOR}x each checkpoint + 2 GiB)")

    offline.apply()
    unset = [k for k, v in offline.OFFLINE_ENV.items() if os.environ.get(k) != v]
    consent = Path.home() / "intel" / "openvino_telemetry"
    declined = consent.exists() and consent.read_text(encoding="utf-8", errors="replace").strip() == "0"
    add("telemetry off", "PASS" if not unset and declined else "FAIL",
        ("HF hub offline and telemetry switches set; OpenVINO telemetry declined (~/intel/openvino_telemetry = 0)"
         if not unset and declined else f"not set: {', '.join(unset) or 'OpenVINO telemetry consent file'}"))

    present = [k for k in NETWORK_VARS if os.environ.get(k)]
    add("no network variables", "FAIL" if present else "PASS",
        f"set: {', '.join(present)}: unset them for MedWB (a library may try the network through them)"
        if present else f"none of {', '.join(NETWORK_VARS[:6])}, HF_ENDPOINT, HF_TOKEN, PIP_INDEX_URL is set")
    return out


# A variant's resident memory beyond its weights (runtime, buffers, the KV cache of a short
# context): an estimate for planning, the benchmark measures the real peak.
RUNTIME_OVERHEAD_GIB = 0.5


def routes(model: str) -> dict:
    """The route matrix for one checkpoint folder: its family, and for every variant of the
    default matrix whether its route takes the family (else why), the RAM the variant needs
    (estimated from the parameter count and its bits per weight) and what is missing to run
    it here."""
    from medwb.backends import registry
    from medwb.backends.variants import DEFAULT_MATRIX, label, resolve_model, route_problems
    from medwb.models import architectures
    from medwb.paths import model_config
    folder = resolve_model(model, consent=False)
    arch = architectures.detect(folder)
    shape = architectures.shape(model_config(folder))
    rows = []
    # A folder running its own code: each route as it would be with the user's consent, and
    # that the consent is missing (so that the matrix says what --trust-remote-code gives).
    missing_consent = arch.remote_code and not architectures.remote_code_trusted()
    for v in DEFAULT_MATRIX:
        entry = registry.get(v["backend"])
        why = "; ".join(route_problems(entry, folder, trusted=True)) or None
        if why is None and missing_consent:
            why = "needs --trust-remote-code (runs the folder's own Python code: read it first)"
        bits = entry.weight_bits(v) or 32
        ram = shape.parameters * bits / 8 / GIB + RUNTIME_OVERHEAD_GIB
        install = "" if envs.available(entry.env) else f"the {entry.env} environment: `make setup`"
        # Where it runs: what a deployer must still know (the family's condition, the library's state).
        note = "; ".join(filter(None, (arch.conditions.get(entry.name), entry.caveat))) if why is None else ""
        rows.append({"variant": label(v), "takes": why is None, "why": why or "", "ram_gib": round(ram, 1),
                     "install": install, "note": note})
    return {"model": str(folder), "family": arch.name, "title": arch.title, "remote_code": arch.remote_code,
            "remote_code_trusted": arch.remote_code and not missing_consent,
            "parameters": shape.parameters, "tied_embeddings": shape.tied, "read_share": round(shape.read_share, 3),
            "routes": rows}


def format_routes(matrix: dict) -> str:
    head = (f"routes for {matrix['model']}: {matrix['family']} ({matrix['title']}), "
            f"{matrix['parameters'] / 1e9:.3g} B parameters"
            + (", tied embeddings" if matrix["tied_embeddings"] else "") + "; RAM is an estimate "
            f"(weights at the variant's bits + {RUNTIME_OVERHEAD_GIB} GiB), the benchmark measures it")
    width = max(len(r["variant"]) for r in matrix["routes"])
    lines = [head] + [f"  {'yes' if r['takes'] else 'no ':<3}  {r['variant']:<{width}}  {r['ram_gib']:>6.1f} GiB  "
                      + (r["why"] or "; ".join(filter(None, (f"needs {r['install']}" if r["install"] else "",
                                                              r["note"]))))
                      for r in matrix["routes"]]
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    width = max(len(r["check"]) for r in rows)
    return "\n".join(f"{r['status']:<4}  {r['check']:<{width}}  {r['detail']}" for r in rows)
