"""Connecting to a Ray cluster, and what its nodes are: kinds, CPUs, bandwidth.

Every Ray import of MedWB happens in this package, after ``connect``: telemetry off, and a
cluster whose head is on this machine's loopback stays on loopback.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path

from medwb.errors import MedwbError

KIND_PREFIX = "medwb-kind:"


def _host(address: str) -> str:
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    return host


def is_loopback(address: str) -> bool:
    host = _host(address)
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_address(address: str) -> str:
    """HOST:PORT of the cluster's head (GCS), e.g. 10.0.0.5:6379; refused otherwise."""
    form = r"[A-Za-z0-9_.\-]+:\d{1,5}|\[[0-9a-fA-F:]+\]:\d{1,5}"
    if not isinstance(address, str) or not re.fullmatch(form, address.strip()) or \
            not 0 < int(address.rsplit(":", 1)[1]) < 65536:
        raise MedwbError(f"--cluster {address!r}: give the head node's HOST:PORT, e.g. 10.0.0.5:6379 "
                         "(the address `medwb cluster head` printed)")
    return address.strip()


TOKEN_ENV = "MEDWB_CLUSTER_TOKEN_FILE"


def token_file() -> Path:
    """The cluster's shared secret: ``MEDWB_CLUSTER_TOKEN_FILE``, else Ray's default file."""
    return Path(os.environ.get(TOKEN_ENV) or Path.home() / ".ray" / "auth_token").expanduser()


def ray_env(address: str = "") -> dict:
    """Environment for Ray in this process and every process it starts: no usage stats
    (Ray's own telemetry); for a head on loopback, no node address other than loopback (Ray
    would otherwise swap 127.0.0.1 for the address of the default route); for a head on the
    intranet, Ray's token authentication, every machine holding the same token file."""
    env = {"RAY_USAGE_STATS_ENABLED": "0",
           # A task's probe must not outlive it on the node: Ray kills a worker's children when
           # the worker exits (its driver died, the task was cancelled); with this the raylet
           # also reaps them when the worker itself was killed.
           "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper": "true"}
    if address and is_loopback(address):
        env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray's switch for "this machine only"
    elif address:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file()))
    return env


def check_token(address: str) -> None:
    """An intranet cluster needs the head's token on this machine (never on a command line)."""
    if is_loopback(address):
        return
    path = token_file()
    if not path.is_file() or len(path.read_text(encoding="utf-8").strip()) < 16:
        raise MedwbError(f"--cluster {address}: no cluster token in {path}: copy the head's token file "
                         f"(printed by `medwb cluster head`) here with mode 0600, or set {TOKEN_ENV}")


def connect(address: str):
    """``ray`` connected to the cluster at ``address`` as a driver; a clear error when no
    cluster answers there."""
    address = check_address(address)
    check_token(address)
    _answers(address)
    os.environ.update(ray_env(address))
    try:
        import ray
    except ImportError:
        raise MedwbError("--cluster needs Ray, MedWB's optional cluster extra: `make cluster` (or "
                         "`pip install -r requirements/cluster.lock` in the main environment)") from None
    if ray.is_initialized():
        return ray
    extra = {"_node_ip_address": "127.0.0.1"} if is_loopback(address) else {}
    from medwb.models import architectures
    if architectures.remote_code_trusted():  # the user's consent to a folder's own code reaches every task
        extra["runtime_env"] = {"env_vars": {architectures.TRUST_ENV: "1"}}
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                 namespace="medwb", **extra)
    except (ConnectionError, RuntimeError, ValueError) as e:
        why = "" if is_loopback(address) else f"the token in {token_file()} is not the head's, or "
        raise MedwbError(f"--cluster {address}: the Ray cluster there did not take this driver ({why}it is not a "
                         f"Ray head: {str(e).splitlines()[0][:120]}); check the address and the token") from None
    return ray


def _answers(address: str, timeout_s: float = 5.0) -> None:
    """Refuse at once when nothing listens at the head's address (Ray itself retries for
    minutes before it gives up)."""
    import socket
    host, port = _host(address), int(address.rsplit(":", 1)[1])
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as e:
        raise MedwbError(f"--cluster {address}: nothing answers there ({e.strerror or e}); start the head with "
                         "`medwb cluster head --ip <this address>` or check the address and the firewall") from None


def kinds() -> dict[str, dict]:
    """kind -> {"resource", "nodes": [node ids], "cpus": the fewest CPUs of its nodes}, alive nodes only."""
    import ray
    out: dict[str, dict] = {}
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        for res in n["Resources"]:
            if res.startswith(KIND_PREFIX):
                k = out.setdefault(res[len(KIND_PREFIX):], {"resource": res, "nodes": [], "cpus": None})
                k["nodes"].append(n["NodeID"])
                cpus = int(n["Resources"].get("CPU", 0))
                k["cpus"] = cpus if k["cpus"] is None else min(k["cpus"], cpus)
    return out


def head_node_id() -> str:
    import ray
    for n in ray.nodes():
        if n.get("Alive") and "node:__internal_head__" in n["Resources"]:
            return n["NodeID"]
    return ray.get_runtime_context().get_node_id()


def require_kinds(address: str) -> dict[str, dict]:
    found = kinds()
    if not found:
        raise MedwbError(f"--cluster {address}: no MedWB server has joined (no node with a {KIND_PREFIX}* "
                         f"resource): on each server run `medwb cluster join {address}`")
    bad = [k for k, v in found.items() if not v["cpus"]]
    if bad:
        raise MedwbError(f"--cluster {address}: node kind(s) {', '.join(bad)} offer no CPUs; join them with "
                         "`medwb cluster join` (which gives Ray the server's cores)")
    return found


# ---------------------------------------------------------------- on a node
def kind_name(cpu: dict, flags: list[str], cores: int) -> str:
    """A server's kind from what decides its speed: CPU model, cores, widest ISA."""
    model = re.sub(r"\((R|TM)\)|CPU|Processor|@.*$|\d+-Core", " ", cpu.get("model") or "unknown", flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or "cpu"
    tier = ("amx" if "amx_tile" in flags else "avx512" if "avx512f" in flags else
            "avx2" if "avx2" in flags else "sse")
    return f"{slug}-{cores}c-{tier}"


def node_info(run_id: str, threads: int, bandwidth_mb: int) -> dict:
    """This node (inside a task): id, address, kind, CPU model and flags, and its memory
    bandwidth, measured once per run on this node (kept in the node's own cache)."""
    import ray
    from medwb import sysinfo
    from medwb.bench import bandwidth
    from medwb.paths import cache_dir, write_json_atomic
    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    resources = next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node_id), {})
    cpu = sysinfo.cpu()
    path = Path(cache_dir()) / "cluster" / run_id / f"bandwidth-{node_id[:16]}.json"
    if path.exists():
        bw = json.loads(path.read_text(encoding="utf-8"))
    else:  # inside a timing task: the node is ours alone while it is measured
        bw = bandwidth.measure(threads, bandwidth_mb)
        write_json_atomic(path, bw)
    return {"node_id": node_id, "ip": ray.util.get_node_ip_address(),
            "kind": next((r[len(KIND_PREFIX):] for r in resources if r.startswith(KIND_PREFIX)), None),
            "cpus": int(resources.get("CPU", 0)) or None,
            "cpu": {"model": cpu["model"], "flags": sysinfo.isa_flags()},
            "memory_total_gib": cpu["memory_total_gib"], "bandwidth": bw}


# ---------------------------------------------------------------- the drivers' shared steps
def lost(e: Exception) -> str:
    """A task Ray gave up on (its node or worker died more often than Ray retries), in one line."""
    return f"lost: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


