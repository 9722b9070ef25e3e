"""Build the llama.cpp environment (``.venvs/llamacpp``): ``make setup`` runs this.

llama.cpp is the peer most users would pick instead of the two routes, so every benchmark
shows it beside them. PyPI has ``llama-cpp-python`` as source only; it is built here for
this CPU (``GGML_NATIVE``: the ISA of the machine that builds it, as llama.cpp's own
instructions do), from the hashed lock file, without build isolation (the build tools are
locked too), with tests, examples, server and curl off.

The same source archive ships ``convert_hf_to_gguf.py`` (with ``conversion/`` and ``gguf-py``): they are
unpacked beside the environment (``src/llama.cpp``) and run in the main environment, which
has torch and transformers (medwb.backends.toolchain.gguf_export).

A machine that cannot build it (no compiler, no cmake) is not a failed setup: the reason
is written to ``UNAVAILABLE`` in the environment, ``make`` carries on, and every
``llama.cpp:*`` variant becomes an error record quoting it. Standard library only: it runs
with the system Python before any environment exists.

    python -m medwb.backends.toolchain.llamacpp_setup ENV_DIR LOCK [WHEELHOUSE]
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from medwb.bundle import parse_lock

UNAVAILABLE = "UNAVAILABLE"
BUILD_INFO = "medwb_build.json"
SOURCE_DIR = "src/llama.cpp"
# Native build for this CPU; only the library the Python binding loads.
CMAKE_ARGS = ("-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
              "-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAVA_BUILD=OFF")
# Installed first: the build of llama-cpp-python needs them (no build isolation).
BUILD_TOOLS = ("scikit-build-core", "packaging", "pathspec", "setuptools", "wheel")
# pip's own wrap-up lines, which hide the build's real error.
_GENERIC = re.compile(r"subprocess-exited-with-error|metadata-generation-failed|originates from a subprocess")
PIP = ("-m", "pip", "--disable-pip-version-check", "-q")


def _pip(python: Path, args: list[str], log: Path, env: dict | None = None) -> None:
    with log.open("a", encoding="utf-8") as f:
        f.write(f"$ {python} {' '.join(PIP + tuple(args))}\n")
        f.flush()
        proc = subprocess.run([str(python), *PIP, *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env, stdin=subprocess.DEVNULL)
    if proc.returncode:
        raise RuntimeError(f"pip {args[0]} failed (exit {proc.returncode})")


def _last_error(log: Path) -> str:
    """The most telling line of the build log (CMake and compiler errors first)."""
    lines = [x.strip() for x in log.read_text(encoding="utf-8", errors="replace").splitlines()
             if x.strip() and not _GENERIC.search(x)]
    for pattern in (r"CMake Error.*|Could not find.*|No CMAKE_\w+_COMPILER.*", r"error:.*", r"ERROR:.*"):
        hits = [x for x in lines if re.search(pattern, x)]
        if hits:
            return hits[-1][:300]
    return lines[-1][:300] if lines else "no output"


def build(env_dir: Path, lock: Path, wheelhouse: Path | None = None) -> dict:
    """Create the venv, fetch the locked files (hash-checked), install the build tools,
    build and install the rest, unpack the converter. Raises on any failure."""
    env_dir.mkdir(parents=True, exist_ok=True)
    log = env_dir / "build.log"
    log.write_text("", encoding="utf-8")
    started = time.time()
    python = env_dir / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    locked = parse_lock(lock)
    version = locked["llama-cpp-python"]["version"]
    files = env_dir / "src" / "files"
    files.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if wheelhouse:
        env["PIP_CONFIG_FILE"] = os.devnull  # nothing but the bundle is consulted
        source = ["--no-index", "--find-links", str(wheelhouse)]
    else:
        _pip(python, ["download", "--no-deps", "--require-hashes", "-r", str(lock), "-d", str(files)], log, env)
        source = ["--no-index", "--find-links", str(files)]
    with tempfile.TemporaryDirectory() as tmp:
        tools = Path(tmp) / "build-tools.txt"
        tools.write_text("".join(f"{locked[n]['name']}=={locked[n]['version']} "
                                 + " ".join(f"--hash=sha256:{h}" for h in sorted(locked[n]["hashes"])) + "\n"
                                 for n in BUILD_TOOLS if n in locked), encoding="utf-8")
        _pip(python, ["install", *source, "--require-hashes", "--no-deps", "-r", str(tools)], log, env)
    env["CMAKE_ARGS"] = CMAKE_ARGS
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 1)
    _pip(python, ["install", *source, "--require-hashes", "--no-deps", "--no-build-isolation", "-r", str(lock)],
         log, env)
    _pip(python, ["install", *source, "--no-deps", "--no-build-isolation", "-e", str(Path(__file__).parents[3])],
         log, env)
    unpack_converter(env_dir, wheelhouse or files, version)
    info = {"cmake_args": CMAKE_ARGS, "seconds": round(time.time() - started, 1),
            "llama_cpp_python": version,
            "built_on": _cpu_model(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (env_dir / BUILD_INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")
    return info


def unpack_converter(env_dir: Path, files: Path, version: str) -> Path:
    """``convert_hf_to_gguf.py`` with its ``conversion`` package and ``gguf-py``, from the
    locked source archive."""
    sdist = next(iter(sorted(files.glob(f"llama_cpp_python-{version}.tar.gz"))), None)
    if sdist is None:
        raise RuntimeError(f"no llama_cpp_python-{version}.tar.gz in {files} (the converter ships in it)")
    dest = env_dir / SOURCE_DIR
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and (
            m.name == prefix + "convert_hf_to_gguf.py"
            or m.name.startswith((prefix + "conversion/", prefix + "gguf-py/gguf/")))]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    env_dir, lock = Path(argv[0]), Path(argv[1])
    wheelhouse = Path(argv[2]).resolve() if len(argv) == 3 and argv[2] else None
    marker = env_dir / UNAVAILABLE
    marker.unlink(missing_ok=True)
    try:
        info = build(env_dir, lock, wheelhouse)
    except Exception as e:  # noqa: BLE001  (any failure: recorded, setup goes on)
        log = env_dir / "build.log"
        reason = f"{e}: {_last_error(log)}" if log.exists() else str(e)
        env_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"llama.cpp could not be built on this machine ({reason}); see {log}\n",
                          encoding="utf-8")
        print(f"WARNING: {marker.read_text().strip()}. The llama.cpp variants will be error records; "
              "the rest of the workbench is not affected.", file=sys.stderr)
        return 0
    print(f"llama.cpp built for this CPU in {info['seconds']:.0f} s ({CMAKE_ARGS})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
