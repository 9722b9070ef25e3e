"""``medwb eval --cluster ADDRESS``: the missing answers of every variant, in shards over the
cluster's nodes.

A shard (``medwb.cluster.tasks.answer``) asks Ray for its threads' CPUs only, so shards pack
onto every node, of any kind. Each shard's answers are appended to the variant's answer cache
on this machine (the same cache as a local run's, so local and cluster runs resume each
other) as soon as the shard returns. A shard whose node dies is retried by Ray elsewhere;
one that still fails leaves its samples unanswered, and the variant's error says so.
Each cached answer notes the node and CPU that gave it.
"""
from __future__ import annotations

import math
from pathlib import Path

from medwb import jsonl
from medwb.backends.variants import label
from medwb.cluster import nodes
from medwb.paths import model_identity

# Samples per shard: enough to pay for loading the model in a fresh process, few enough
# that every slot of the cluster gets work (about two shards per slot).
MIN_SHARD, MAX_SHARD = 4, 64


def shard_size(missing: int, slots: int) -> int:
    return max(MIN_SHARD, min(MAX_SHARD, math.ceil(missing / max(1, 2 * slots))))


def answer_all(work: list[tuple[dict, Path, list[dict]]], cfg: dict, address: str, log=print,
               progress: bool = True) -> dict[str, str]:
    """``work``: (variant, its answer cache, the asks it misses). Returns variant -> error."""
    from tqdm.auto import tqdm

    ray = nodes.connect(address)
    from medwb.cluster import tasks
    found = nodes.require_kinds(address)
    threads = cfg["threads"]
    slots = sum(len(k["nodes"]) * max(1, k["cpus"] // threads) for k in found.values())
    identity = model_identity(cfg["model_dir"])
    shipped = {k: cfg[k] for k in ("model", "threads", "kernel_build", "timeout_s", "artifacts_dir")}
    tracker = tasks.start_tracker()
    pending = {}
    for v, cache, missing in work:
        size = shard_size(len(missing), slots)
        for i in range(0, len(missing), size):
            job = {"key": f"{label(v)}|{i}", "variant": v, "cfg": shipped, "model_identity": identity,
                   "asks": missing[i:i + size]}
            pending[tasks.answer.options(num_cpus=threads).remote(job, tracker)] = (v, cache)
    log(f"cluster {address}: {len(pending)} shards over {slots} slot(s) of {threads} thread(s) "
        f"on {sum(len(k['nodes']) for k in found.values())} node(s)")
    bar = tqdm(total=sum(len(missing) for _, _, missing in work), desc="eval (cluster)", unit="sample", disable=not progress)
    errors: dict[str, str] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        for ref in ready:
            v, cache = pending.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayError as e:
                out = {"answers": [], "error": nodes.lost(e)}
            jsonl.append(cache, [{**a, "node": out["node"]["node_id"][:16], "node_ip": out["node"]["ip"],
                                        "cpu": out["node"]["cpu"]} for a in out["answers"]])
            if out.get("error"):
                errors[label(v)] = errors.get(label(v)) or f"{out['error']} (on {out.get('node', {}).get('ip')})"
            bar.update(len(out["answers"]))
        if pending and not nodes.kinds():  # nothing left to run the shards on
            for ref, (v, _) in pending.items():
                ray.cancel(ref, force=True)
                errors.setdefault(label(v), "no MedWB node is left in the cluster")
            pending.clear()
    bar.close()
    return errors
