"""``medwb cluster head|join|status|stop``: Ray's own ``ray start``/``ray stop``, with the
settings MedWB relies on (usage stats off, no dashboard, the head runs no tasks, each server
joins with its kind and its cores)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from medwb.cluster import nodes
from medwb.errors import MedwbError, check_count


def _ray(args: list[str], address: str = "") -> int:
    exe = Path(sys.executable).parent / "ray"
    if not exe.exists():
        raise MedwbError("Ray is not installed in this environment: `make cluster` installs MedWB's cluster extra")
    cmd = [str(exe), *args]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env={**os.environ, **nodes.ray_env(address)}, stdin=subprocess.DEVNULL)


def head(ip: str, port: int, serve: bool = False, kind: str = "", cores: int = 0) -> int:
    """The head on this workstation: it drives runs and, unless ``serve``, runs no task
    itself; with ``serve`` it is also one of the servers (its kind and cores), which is how
    one machine alone makes a cluster (Ray cannot join a second node to a loopback head)."""
    check_count("--port", port, 1, "the head's port, e.g. 6379")
    address = nodes.check_address(f"{ip}:{port}")
    made = _make_token() if not nodes.is_loopback(address) else None
    offer, words = _offer(kind, cores) if serve else (["--num-cpus=0"], "")
    rc = _ray(["start", "--head", f"--node-ip-address={ip}", f"--port={port}", *offer,
               "--include-dashboard=false", "--disable-usage-stats"], address)
    if rc == 0:
        print(f"\nhead started{' (and serving as ' + words + ')' if serve else ''}. "
              f"On each server: medwb cluster join {address}\n"
              f"Then here: medwb bench --cluster {address}   (or medwb eval --cluster {address})")
        if made:
            print(f"Ray's token authentication is on: copy {made} to each server (same path, mode 0600, "
                  f"or point {nodes.TOKEN_ENV} at it) before it joins.")
    return rc


def _make_token() -> Path:
    """The cluster's token file (0600), made once: Ray then refuses any process without it."""
    import secrets
    path = nodes.token_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(32))
    return path


def _offer(kind: str, cores: int) -> tuple[list[str], str]:
    """Ray arguments offering this machine as a server: its cores and its kind (one unit:
    one timing task at a time); and the offer in words."""
    check_count("--cores", cores, 0, "0: every core this process may use")
    cores = cores or len(os.sched_getaffinity(0))
    kind = kind or this_kind(cores)
    if not kind.replace("-", "").replace("_", "").isalnum():
        raise MedwbError(f"--kind {kind!r}: use letters, digits, - and _ only")
    return ([f"--num-cpus={cores}", f"--resources={json.dumps({nodes.KIND_PREFIX + kind: 1})}"],
            f"kind {kind}, {cores} cores")


def this_kind(cores: int) -> str:
    from medwb import sysinfo
    return nodes.kind_name(sysinfo.cpu(), sysinfo.isa_flags(), cores)


def join(address: str, ip: str, kind: str = "", cores: int = 0) -> int:
    """This server joins the head at ``address`` with its kind (one unit: one timing task at a
    time) and its cores."""
    address = nodes.check_address(address)
    if nodes.is_loopback(address):
        raise MedwbError(f"cluster join {address}: Ray joins no second node to a head on loopback; on one machine "
                         "start the head with --serve instead, or give it the intranet address (--ip)")
    if nodes.is_loopback(ip):
        raise MedwbError("cluster join: give --ip, this server's intranet address that the head can reach")
    nodes.check_token(address)
    offer, words = _offer(kind, cores)
    rc = _ray(["start", f"--address={address}", *offer, "--disable-usage-stats", f"--node-ip-address={ip}"], address)
    if rc == 0:
        print(f"\njoined {address} as {words}")
    return rc


def status(address: str) -> int:
    nodes.connect(address)
    found = nodes.kinds()
    if not found:
        print(f"{address}: no MedWB server has joined yet (medwb cluster join {address})")
    for kind, f in sorted(found.items()):
        print(f"{kind}: {len(f['nodes'])} node(s), {f['cpus']} CPUs each")
    return 0


def stop() -> int:
    return _ray(["stop"])
