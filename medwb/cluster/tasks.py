"""What runs on the cluster's nodes: one variant's timing, one evaluation shard, and the
tracker that notes where each task started (so a retried task's record says so).

The work itself is MedWB's own, as on one machine: artifacts prepared in the node's cache
(or the shared ``artifacts_dir``), each probe or answer worker in a fresh process of the
backend's environment on that node.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray

from medwb.clock import now
from medwb.cluster import nodes
from medwb.paths import model_identity
from medwb.errors import MedwbError
from medwb.sysinfo import default_threads

# Ray retries a task whose node or worker process died (not one that returned an error),
# on any node offering what it asks for: for a timing task, another node of its kind.
RETRIES = 3


@ray.remote(num_cpus=0)
class Tracker:
    """Where each task started: key -> [{"node_id", "started"}], one entry per attempt."""

    def __init__(self):
        self.attempts: dict[str, list[dict]] = {}

    def started(self, key: str, node_id: str) -> None:
        self.attempts.setdefault(key, []).append({"node_id": node_id, "started": now()})

    def snapshot(self) -> dict[str, list[dict]]:
        return self.attempts


def _started(tracker, key: str) -> str:
    node_id = ray.get_runtime_context().get_node_id()
    ray.get(tracker.started.remote(key, node_id))  # noted before any work: a death later still shows
    return node_id


def _threads(asked: int) -> int:
    """The task's threads: as asked, else every CPU Ray gave this task (the node's)."""
    given = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 0))
    return asked or given or default_threads()


def _model_here(model: str, identity: str) -> Path:
    from medwb.backends.variants import resolve_model
    model_dir = resolve_model(model)
    if model_identity(model_dir) != identity:
        raise MedwbError(f"node {ray.util.get_node_ip_address()} has another model at {model_dir} (its files differ "
                         "from the driver's): copy the same checkpoint to every server, or use shared storage")
    return model_dir


def _prepare(model_dir: Path, v: dict, cfg: dict, log) -> dict:
    """The variant's artifact, made once per node (once in all with shared storage):
    ``variants.prepare`` converts one variant at a time per model folder, so tasks packed
    on one node never race."""
    from medwb.backends.variants import label, prepare
    return prepare(model_dir, [v], cfg, log)[label(v)]


def start_tracker():
    """The attempt tracker (``Tracker``), on the head: it lives as long as the cluster does."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return Tracker.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(nodes.head_node_id(), soft=False)).remote()


@ray.remote(max_retries=RETRIES)
def measure(job: dict, tracker) -> dict:
    """One variant on this node, which the task has to itself (its kind's unit and every CPU):
    the node's bandwidth (once per run), the artifact, then the probe as ``medwb bench`` runs it."""
    from medwb.bench.run import matching_kernel_build, measure_variant, probe_spec
    started = time.perf_counter()
    _started(tracker, job["key"])
    cfg, v, lines = job["cfg"], job["variant"], []
    threads = _threads(cfg["threads"])
    node = nodes.node_info(job["run_id"], threads, cfg["bandwidth_mb"])
    art, side = {}, None
    try:
        model_dir = _model_here(cfg["model"], job["model_identity"])
        art = _prepare(model_dir, v, {**cfg, "threads": threads}, lines.append)
        matching = matching_kernel_build({**cfg, "variants": [v]})  # this node's own CPU flags
        spec = probe_spec(v, art, cfg, threads, job["pair_prompt"], job["cases"], matching, model_dir)
        result, side = measure_variant(v, art, spec, cfg, threads)
    except MedwbError as e:
        result = {"error": str(e)}
    return {"node": node, "threads": threads, "art": art, "result": result, "side": side, "log": lines,
            "wall_s": round(time.perf_counter() - started, 1)}


@ray.remote(max_retries=RETRIES)
def answer(job: dict, tracker) -> dict:
    """One evaluation shard: these samples of one variant, answered on this node by the
    evaluation worker (greedy), returned to the driver, which keeps them."""
    from medwb.eval.run import answer_missing, read_cache
    _started(tracker, job["key"])
    cfg, v, lines = job["cfg"], job["variant"], []
    node = {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}
    from medwb import sysinfo
    node["cpu"] = sysinfo.cpu()["model"]
    try:
        model_dir = _model_here(cfg["model"], job["model_identity"])
        art = _prepare(model_dir, v, cfg, lines.append)
    except MedwbError as e:
        return {"node": node, "answers": [], "error": str(e), "log": lines}
    with tempfile.TemporaryDirectory(prefix="medwb-shard-") as folder:
        cache = Path(folder) / "answers.jsonl"
        error = art.get("error") or answer_missing(v, art, job["asks"], cache, cfg, lambda _: None)
        answers = list(read_cache(cache).values())
    return {"node": node, "answers": answers, "error": error, "log": lines}
