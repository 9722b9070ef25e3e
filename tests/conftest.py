"""Shared fixtures. The demo model is built once per machine (cached by recipe hash)."""
import functools
import os
import sys
from pathlib import Path

import pytest

import medwb  # noqa: F401  (offline switches first)
from medwb import envs

# `make test` runs two test processes at once (pytest-xdist). Each gets its share of the cores
# for the model processes it starts (sysinfo.default_threads, inherited by every child) and for
# the libraries that size themselves (torch, MKL, tokenizers): two OpenMP pools spinning on
# every core of a 2-core machine run 5-40x slower than one pool per core. A value set by the
# caller is kept.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    for _name in ("MEDWB_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(_name, str(max(1, (os.cpu_count() or 1) // _WORKERS)))

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from medwb.models import demo_model
    return demo_model.ensure()


def run_python(env: str, code: str, timeout: float = 600, extra_env: dict | None = None):
    """Run ``code`` with the interpreter of ``env``; return what it hands back with
    ``medwb.child.write_result`` (a result file, whatever the libraries print)."""
    from medwb import child
    python = sys.executable if env == "main" else str(envs.python_of(env))
    assert Path(python).exists(), f"the {env} environment is missing ({python}): run `make setup`"
    return child.run([python, "-c", code], timeout=timeout, cwd=REPO,
                     env={**os.environ, **(extra_env or {})}, what=f"{env} env test code")


# --- privacy: a network namespace with loopback only, every connect() recorded ----------
# Brings the namespace's loopback up (a new namespace has it down) without needing `ip`,
# then runs the command in it.
_LO_UP_AND_EXEC = """
import fcntl, os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 0x1 | 0x40))  # SIOCSIFFLAGS: IFF_UP | IFF_RUNNING
s.close()
os.execvp(sys.argv[1], sys.argv[1:])
"""
NETAUDIT = Path(__file__).resolve().parent / "netaudit"
LOOPBACK = ("127.", "::1", "::ffff:127.")


@functools.cache
def network_namespace_reason() -> str | None:
    """Why a loopback-only network namespace cannot be made here, or None."""
    import shutil
    import subprocess
    if not shutil.which("unshare"):
        return "no `unshare` on this machine"
    probe = subprocess.run(["unshare", "-n", sys.executable, "-c", _LO_UP_AND_EXEC, "true"], capture_output=True,
                           text=True)
    return None if probe.returncode == 0 else f"no permission for a network namespace ({probe.stderr.strip()[-200:]})"


def isolated(command: list[str], log: Path, env: dict | None = None) -> tuple[list[str], dict]:
    """``command`` inside a new network namespace with loopback only (where this machine
    allows one: network_namespace_reason), every Python process under it recording its
    connect() calls and name lookups in ``log``."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(NETAUDIT), *filter(None, [env.get("PYTHONPATH")])])
    env["MEDWB_NET_AUDIT"] = str(log)
    if network_namespace_reason():
        return list(map(str, command)), env  # recorded, not isolated
    return ["unshare", "-n", sys.executable, "-c", _LO_UP_AND_EXEC, *map(str, command)], env


def outside_connections(log: Path) -> list[dict]:
    """The recorded connect() calls to anything but loopback or a Unix socket."""
    import json
    if not log.exists():
        return []
    bad = []
    for line in log.read_text(encoding="utf-8").splitlines():
        entry = json.loads(line)
        if entry["event"] != "connect" or entry["family"] == 1:  # AF_UNIX
            continue
        host = str(entry["address"][0] if isinstance(entry["address"], list) else entry["address"])
        if not host.startswith(LOOPBACK) and host != "localhost":
            bad.append(entry)
    return bad
