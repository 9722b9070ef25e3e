"""``medwb bench --cluster ADDRESS``: the benchmark matrix over the cluster's server kinds.

Each (server kind, variant, round) is one Ray task (``medwb.cluster.tasks.measure``) that asks
for its kind's unit and all of a node's CPUs: a node times one variant at a time, with nothing
beside it. Results are appended to ``<run>/cluster/results.jsonl`` as they arrive and the
records (``records/bench.jsonl``, ``bench.csv``: the same format as one machine's, plus
``server``, ``node``, ``node_ip`` and ``attempts``) are rebuilt from them each time, so a killed
driver loses nothing measured: ``--run-dir`` of the same run resumes with what is missing or
failed. A task whose node dies is retried by Ray on another node of its kind; when no node of
the kind is left, it ends as an error record.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from medwb import jsonl
from medwb.backends import registry
from medwb.backends.variants import label
from medwb.bench.config import validate
from medwb.clock import now
from medwb.cluster import nodes
from medwb.paths import model_identity
from medwb.errors import MedwbError

RESULTS = Path("cluster") / "results.jsonl"
PLAN = Path("cluster") / "plan.json"
PROGRESS = Path("cluster") / "progress.json"
# How often the driver looks at the cluster between results (lost kinds, progress file): it
# may share a machine with a timing task: each look costs a few milliseconds.
POLL_S = 2.0


def task_key(kind: str, v: dict, rnd: int) -> str:
    return f"{kind}|{label(v)}|{rnd}"


def read_results(run_dir: Path) -> dict[str, dict]:
    """key -> the latest result of that task; a line cut off by a crash is ignored."""
    out: dict[str, dict] = {}
    path = Path(run_dir) / RESULTS
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            out[entry["key"]] = entry
    return out


def _plan(cfg: dict, identity: str) -> dict:
    return json.loads(json.dumps({"config": cfg, "model_identity": identity}, default=str))


def check_resume(run_dir, plan: dict) -> None:
    """A given run folder that holds a cluster run of another matrix is refused (before
    anything connects or runs); one of the same matrix is resumed."""
    path = Path(run_dir) / PLAN if run_dir else None
    if not path or not path.exists():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    if old != plan:
        changed = sorted(k for k in set(old.get("config", {})) | set(plan["config"])
                         if old.get("config", {}).get(k) != plan["config"].get(k))
        what = ", ".join(changed) or "the model's files"
        raise MedwbError(f"--run-dir {run_dir} holds a cluster run of another matrix ({what} differ): give a new "
                         "run folder, or the same settings to resume it")


def open_run(run_dir, cfg: dict, plan: dict, address: str) -> Path:
    """The given run folder, or a new one, with the matrix's plan written."""
    from medwb import provenance, runner
    from medwb.paths import write_json_atomic
    if not run_dir:
        run_dir = runner.new_run_dir()
        provenance.write(run_dir, {"bench": cfg, "cluster": address}, kind="bench")
    run_dir = Path(run_dir)
    if not (run_dir / PLAN).exists():
        write_json_atomic(run_dir / PLAN, plan)
    return run_dir


def run(cfg: dict, address: str, run_dir=None, log=print, progress: bool = True) -> list[dict]:
    from tqdm.auto import tqdm

    from medwb.bench.run import heldout_prompts, quality_cases
    checked = validate(cfg)
    cfg = {**cfg, "variants": checked["variants"]}  # the routes that take the model's family
    if run_dir:
        from medwb.paths import check_writable_dir
        check_writable_dir(run_dir, "--run-dir")
    identity = model_identity(checked["model_dir"])
    plan = _plan(cfg, identity)
    check_resume(run_dir, plan)
    ray = nodes.connect(address)
    from medwb.cluster import tasks
    found = nodes.require_kinds(address)
    run_dir = open_run(run_dir, cfg, plan, address)
    earlier = read_results(run_dir)
    done = {k for k, e in earlier.items() if "error" not in e["result"]}
    cases = quality_cases(cfg["quality_cases"], checked["speed_only"], checked["model_dir"]) if cfg["quality_cases"] \
        else []
    pair_prompt = cases[0]["prompt"] if cases else heldout_prompts(1)[0]
    # The kinds that joined now, and those of an earlier attempt at this run (gone now: their
    # unfinished tasks end as error records rather than vanish from the matrix).
    kinds = sorted(set(found) | {e["server"] for e in earlier.values()})
    matrix = [(kind, v, rnd) for kind in kinds for rnd in range(cfg["rounds"]) for v in cfg["variants"]]
    todo = [m for m in matrix if task_key(*m) not in done]
    log(f"cluster {address}: {len(found)} server kind(s) "
        + "; ".join(f"{k} ({len(f['nodes'])} node(s), {f['cpus']} CPUs)" for k, f in sorted(found.items()))
        + f"; {len(matrix)} timing tasks, {len(matrix) - len(todo)} already in {run_dir}")
    tracker = tasks.start_tracker()
    rebuild = lambda: _quietly(lambda: write_records(run_dir, cfg, checked, cases, address))  # noqa: E731
    rebuild()  # before any task: the driver's own start-up must not overlap a timing
    pending = {}
    for kind, v, rnd in todo:
        if kind not in found:
            _finish(run_dir, kind, v, rnd, {"result": {"error": _gone(kind, run_dir)}}, {}, log)
            continue
        job = {"key": task_key(kind, v, rnd), "variant": v, "cfg": cfg, "run_id": run_dir.name,
               "model_identity": identity, "pair_prompt": pair_prompt, "cases": [] if rnd else cases}
        ref = tasks.measure.options(resources={found[kind]["resource"]: 1}, num_cpus=found[kind]["cpus"]).remote(
            job, tracker)
        pending[ref] = (kind, v, rnd)
    write_progress(run_dir, pending, {}, found)  # this driver's, from its start
    bar = tqdm(total=len(pending), desc="bench (cluster)", unit="task", disable=not progress)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        attempts = ray.get(tracker.snapshot.remote())
        for ref in ready:
            kind, v, rnd = pending.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayError as e:
                out = {"result": {"error": nodes.lost(e)}}
            _finish(run_dir, kind, v, rnd, out, attempts, log)
            bar.update()
        alive = nodes.kinds()
        for ref, (kind, v, rnd) in list(pending.items()):
            if kind not in alive:  # Ray would wait for a node of this kind for ever
                ray.cancel(ref, force=True)
                del pending[ref]
                _finish(run_dir, kind, v, rnd, {"result": {"error": _gone(kind, run_dir)}}, attempts, log)
                bar.update()
        if ready:
            rebuild()
        write_progress(run_dir, pending, attempts, alive)
    bar.close()
    return rebuild()


def _gone(kind: str, run_dir: Path) -> str:
    return (f"no node of server kind {kind} is left in the cluster: not measured; rerun with --run-dir {run_dir} "
            "when one has joined again")


def _finish(run_dir: Path, kind: str, v: dict, rnd: int, out: dict, attempts: dict, log) -> None:
    key = task_key(kind, v, rnd)
    entry = {"key": key, "server": kind, "variant": v, "round": rnd, "finished": now(),
             "attempts": attempts.get(key, []), **out}
    jsonl.append(Path(run_dir) / RESULTS, [entry])
    if "error" in out["result"]:
        log(f"{label(v)} on {kind} failed: {out['result']['error']}")
        return
    from medwb.sysinfo import load_warning
    warning = load_warning(out["result"]["machine_load"]) if out["result"].get("machine_load") else None
    if warning:
        log(f"{label(v)} on {kind} (node {out['node']['ip']}): {warning}")
    if len(entry["attempts"]) > 1:
        log(f"{label(v)} on {kind}: measured on attempt {len(entry['attempts'])} (an earlier node died)")


def write_progress(run_dir: Path, pending: dict, attempts: dict, alive: dict) -> None:
    """What runs where now (for people, and for the fault test)."""
    from medwb.paths import write_json_atomic
    running = {}
    for kind, v, rnd in pending.values():
        key = task_key(kind, v, rnd)
        if attempts.get(key):
            running[key] = attempts[key][-1]["node_id"]
    write_json_atomic(Path(run_dir) / PROGRESS, {
        "updated": now(), "driver_pid": os.getpid(), "pending": [task_key(*p) for p in pending.values()], "running": running,
        "alive": {k: f["nodes"] for k, f in alive.items()}})


def write_records(run_dir: Path, cfg: dict, checked: dict, cases: list[dict], address: str) -> list[dict]:
    """Every record again from the results so far, in the matrix's order; written atomically."""
    from medwb.bench.run import attach_side, records_for, write
    results = read_results(run_dir)
    servers: dict[str, dict] = {}
    for e in results.values():
        if e.get("node"):
            s = servers.setdefault(e["server"], {"nodes": set(), "cpu": e["node"]["cpu"], "cpus": e["node"]["cpus"],
                                                 "bandwidth": e["node"]["bandwidth"]})
            s["nodes"].add(e["node"]["node_id"])
    first = next(iter(servers.values()), {})
    records = [{"record_type": "run", "created": now(), "config": cfg, "model": str(checked["model_dir"]),
                "run_dir": str(run_dir), "speed_only": checked["speed_only"],
                "cluster": {"address": address, "servers": {k: {**s, "nodes": sorted(s["nodes"])}
                                                            for k, s in sorted(servers.items())}},
                "bandwidth": first.get("bandwidth", {}), "cpu": first.get("cpu", {}),
                "python": sys.version.split()[0]}]
    reference = registry.reference_for(checked["model_dir"])
    ref = next((v for v in cfg["variants"] if registry.is_reference(v, reference)), None)
    for kind in sorted({e["server"] for e in results.values()}):
        reference = results.get(task_key(kind, ref, 0)) if ref else None
        reference = reference["result"] if reference and "error" not in reference["result"] else None
        for rnd in range(cfg["rounds"]):
            for v in cfg["variants"]:
                e = results.get(task_key(kind, v, rnd))
                if not e:
                    continue
                node = e.get("node") or {}
                ctx = {"model_dir": checked["model_dir"], "speed_only": checked["speed_only"],
                       "threads": e.get("threads") or cfg["threads"],
                       "bandwidth": node.get("bandwidth") or {"read_gb_s": None},
                       "cpu": node.get("cpu") or servers.get(kind, {}).get("cpu"), "run_id": Path(run_dir).name}
                own = e["result"] if v is ref and rnd == 0 and "error" not in e["result"] else reference
                new = records_for(v, e.get("art") or {}, e["result"], own, cases if rnd == 0 else [], ctx)
                attach_side(new, e.get("side"))
                for r in new:
                    r.update(server=kind, node=node.get("node_id"), node_ip=node.get("ip"),
                             attempts=e.get("attempts", []), wall_s=e.get("wall_s"))
                    if cfg["rounds"] > 1:
                        r["round"] = rnd
                records.extend(new)
    write(records, run_dir)
    return records


def _quietly(fn):
    """``fn()`` without its prints: records are rebuilt from every result each time, and a
    result's load warning was already shown when it arrived."""
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        return fn()


