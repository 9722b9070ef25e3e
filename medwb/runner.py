"""The main job: execute every notebook with papermill into a timestamped run folder.

``runs/<YYYYmmdd-HHMMSS>/`` receives the executed notebooks, whatever they write (each
notebook gets ``run_dir`` as a parameter), ``manifest.json`` (commit, lock files, CPU,
model checksums, parameters: ``medwb.provenance``) and ``summary.json`` (status and
duration per notebook). ``runs/latest`` points at the newest run. A failing notebook is recorded and
the others still run; the job's exit status says whether all passed.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import time
import traceback
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import NOTEBOOKS_DIR, runs_dir, write_json_atomic


# Notebooks that read another's results from the same run folder run after it: the
# comparison's recommendation reads the evaluation's task scores of this run (#32).
RUNS_AFTER = {"03_compare.ipynb": ("06_evaluate.ipynb",)}


def discover(notebooks_dir: Path = NOTEBOOKS_DIR, pattern: str = "[0-9][0-9]_*.ipynb") -> list[Path]:
    """Numbered notebooks in order, except that one listed in ``RUNS_AFTER`` waits for the
    notebooks it reads; new ones join the main job by being added here."""
    found = sorted(Path(notebooks_dir).glob(pattern))
    if not found:
        raise MedwbError(f"no notebooks matching {pattern} in {notebooks_dir}")
    ordered: list[Path] = []
    for nb in found:
        for first in RUNS_AFTER.get(nb.name, ()):
            ordered += [p for p in found if p.name == first and p not in ordered]
        if nb not in ordered:
            ordered.append(nb)
    return ordered


def new_run_dir(root: Path | None = None) -> Path:
    root = Path(root or runs_dir())
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run = root / stamp
    n = 1
    while run.exists():  # two runs in one second
        n += 1
        run = root / f"{stamp}-{n}"
    run.mkdir(parents=True)
    return run


def point_latest(run: Path) -> Path:
    """Atomically repoint ``<root>/latest`` at ``run`` (relative link, survives moves)."""
    latest = run.parent / "latest"
    tmp = run.parent / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run.name)
    os.replace(tmp, latest)
    return latest


def kernel_of(notebook: Path) -> str:
    meta = json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {})
    return meta.get("kernelspec", {}).get("name", "medwb-main")


def notebook_parameters(notebook: Path, run: Path, parameters: dict | None) -> dict:
    """The parameters to pass: ``run_dir`` (when declared) plus the overrides this notebook
    declares (``medwb run -p trials=1`` reaches every notebook with a ``trials`` parameter)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    params = {"run_dir": str(run)} if "run_dir" in declared else {}
    params.update({k: v for k, v in (parameters or {}).items() if k in declared})
    return params


def check_parameters(notebooks: list[Path], parameters: dict | None) -> None:
    """Every override must be declared by at least one of the notebooks (a typo is an
    error, not silently ignored)."""
    import papermill as pm

    declared = {nb.name: set(pm.inspect_notebook(str(nb))) for nb in notebooks}
    unknown = sorted(set(parameters or {}) - set().union(*declared.values()))
    if unknown:
        listing = "; ".join(f"{name} declares {', '.join(sorted(d)) or 'none'}" for name, d in declared.items())
        raise MedwbError(f"no notebook has the parameter(s) {', '.join(unknown)}: {listing}")


def execute(notebook: Path, run: Path, parameters: dict | None = None,
            timeout_s: int = 3600) -> dict:
    """Run one notebook into ``run``; never raises for a notebook error (it is recorded)."""
    import papermill as pm

    output = run / notebook.name
    params = notebook_parameters(notebook, run, parameters)
    started = time.perf_counter()
    record = {"notebook": notebook.name, "kernel": kernel_of(notebook), "output": str(output),
              "parameters": params}
    try:
        # The kernel over IPC sockets, not TCP ports: nothing to listen on, and no "running over
        # TCP without encryption" warning in a hospital's run log (the ports were loopback only).
        from traitlets.config import Config
        pm.execute_notebook(str(notebook), str(output), parameters=params,
                            kernel_name=record["kernel"], cwd=str(run), progress_bar=False,
                            execution_timeout=timeout_s, log_output=False,
                            config=Config({"KernelManager": {"transport": "ipc"}}))
        record["status"] = "ok"
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's error
        record["status"] = "failed"
        record["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
        record["traceback"] = traceback.format_exc(limit=3)
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def run_all(notebooks: list[Path] | None = None, root: Path | None = None,
            parameters: dict | None = None, log=print) -> tuple[Path, list[dict]]:
    notebooks = notebooks or discover()
    check_parameters(notebooks, parameters)  # reject typos before anything runs
    run = new_run_dir(root)
    log(f"run folder: {run}")
    from medwb import provenance, sysinfo
    sysinfo.check_load(log=log)
    provenance.write(run, {"notebooks": [nb.name for nb in notebooks], "overrides": parameters or {}},
                     kind="main job")
    records = []
    for nb in notebooks:
        log(f"  executing {nb.name} (kernel {kernel_of(nb)}) ...")
        rec = execute(nb, run, parameters)
        records.append(rec)
        log(f"    {rec['status']} in {rec['seconds']} s" + (f": {rec['error']}" if rec.get("error") else ""))
        write_json_atomic(run / "summary.json", {"run_dir": str(run), "notebooks": records})
    point_latest(run)
    return run, records
