"""An air-gapped install: everything both environments need, carried in one folder.

A hospital's servers reach no package index. On a connected machine ``make bundle`` (or
``medwb bundle``) writes ``dist/medwb-bundle-<version>/``: the project source (with the
shipped demo model), ``wheelhouse/`` holding a wheel for every line of both hashed lock
files (for the target platform and Python), ``SHA256SUMS`` of every file, ``bundle.json``
and ``INSTALL.md``; optionally one ``.tar.gz``. A locked package published only as source
is built into a wheel there (nothing is compiled inside the intranet) and its wheel's hash
is added to the bundle's copy of the lock, next to the source hash it was built from.

Inside, ``make run WHEELHOUSE=wheelhouse`` (or ``make setup`` / ``make test``) installs with
``--no-index --find-links``, hashes verified; ``python3 -m medwb.bundle check LOCK DIR``
runs first and names a missing wheel and the command that fetches it.

Standard library only: it runs with the system Python before any environment exists.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from medwb.errors import MedwbError

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ("requirements/main.lock", "requirements/bigdl.lock", "requirements/ipex.lock", "requirements/cluster.lock",
         "requirements/serve.lock")
# The platform the locks were compiled for (see LOCK_FLAGS in the Makefile).
PLATFORM, PYTHON_VERSION = "manylinux_2_28_x86_64", "3.11"
_REQ = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(path) -> dict[str, dict]:
    """name -> {"name", "version", "hashes"} from a ``--generate-hashes`` lock file."""
    out, current = {}, None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        m = _REQ.match(line)
        if m:
            current = {"name": m.group(1), "version": m.group(2), "hashes": set()}
            out[normalize(m.group(1))] = current
        for h in re.findall(r"--hash=sha256:([0-9a-f]{64})", line):
            if current is not None:
                current["hashes"].add(h)
    return out


def sha256(path: Path) -> str:
    from medwb.paths import sha256_file
    return sha256_file(path)


def _dist_name(filename: str) -> str | None:
    """The normalized project name of a wheel or sdist file name."""
    if filename.endswith(".whl"):
        return normalize(filename.split("-")[0])
    m = re.match(r"(.+?)-\d[^-]*\.(?:tar\.gz|zip)$", filename)
    return normalize(m.group(1)) if m else None


def missing(lock, wheelhouse) -> list[str]:
    """``name==version`` of every lock line with no wheel of a locked hash in ``wheelhouse``."""
    wheelhouse = Path(wheelhouse)
    by_name: dict[str, list[Path]] = {}
    for f in wheelhouse.glob("*.whl"):
        by_name.setdefault(_dist_name(f.name), []).append(f)
    gone = []
    for key, req in parse_lock(lock).items():
        if not any(sha256(f) in req["hashes"] for f in by_name.get(key, [])):
            gone.append(f"{req['name']}=={req['version']}")
    return gone


def check(lock, wheelhouse) -> None:
    """One line naming what is missing and how to fetch it on the connected side."""
    wheelhouse = Path(wheelhouse)
    if not wheelhouse.is_dir():
        raise MedwbError(f"WHEELHOUSE '{wheelhouse}' is not a folder: give the wheelhouse/ of a bundle made with "
                         "`make bundle` on a connected machine")
    gone = missing(lock, wheelhouse)
    if gone:
        more = f" and {len(gone) - 1} more" if len(gone) > 1 else ""
        raise MedwbError(f"WHEELHOUSE '{wheelhouse}' has no wheel for {gone[0]}{more} (locked in {lock}); on the "
                         f"connected machine run `make bundle` again, or `pip download --no-deps --only-binary=:all: "
                         f"--platform {PLATFORM} --python-version {PYTHON_VERSION} -d wheelhouse {gone[0]}`, and carry "
                         "the wheelhouse in again")


# ------------------------------------------------------------------ building a bundle

def _pip(args: list[str], log) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    log("  $ " + " ".join(cmd[2:]))
    return subprocess.run(cmd, capture_output=True, text=True)


def compatible_platforms(platform: str) -> list[str]:
    """``platform`` and the older manylinux tags a machine of that kind also runs (pip
    matches ``--platform`` exactly: a wheel built for manylinux_2_17 is not found for
    manylinux_2_28 unless it is named too)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform)
    if not m:
        return [platform]
    glibc, arch = int(m.group(1)), m.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for minor, name in legacy.items() if minor <= glibc]


def _download(lock: Path, wheelhouse: Path, platform: str, python_version: str, log) -> list[str]:
    """Wheels of every locked line for the target; the lines with no such wheel returned."""
    abi = "cp" + python_version.replace(".", "")
    target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
              "--abi", abi, "--abi", "abi3", "--abi", "none"]
    for tag in compatible_platforms(platform):
        target += ["--platform", tag]
    reqs = parse_lock(lock)
    pending = dict(reqs)
    source_only: list[str] = []
    while pending:
        req_file = wheelhouse.parent / f".pending-{lock.stem}.txt"
        req_file.write_text("".join(f"{r['name']}=={r['version']} " + " ".join(f"--hash=sha256:{h}" for h in
                                    sorted(r["hashes"])) + "\n" for r in pending.values()), encoding="utf-8")
        res = _pip(["download", "--no-deps", "--require-hashes", "-r", str(req_file), "-d", str(wheelhouse), *target], log)
        req_file.unlink()
        if res.returncode == 0:
            break
        m = re.search(r"No matching distribution found for ([A-Za-z0-9._-]+)", res.stderr)
        if not m or normalize(m.group(1)) not in pending:
            raise MedwbError(f"pip download for {lock.name} failed: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
        key = normalize(m.group(1))
        source_only.append(key)
        del pending[key]
    return source_only


def _build_from_source(lock: Path, keys: list[str], wheelhouse: Path, platform: str, python_version: str,
                       log) -> dict[str, str]:
    """Locked packages published only as source: the sdist (hash checked) built into a wheel
    here. Returns name -> the built wheel's sha256 (added to the bundle's lock)."""
    import sysconfig
    here = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    same = f"{sys.version_info.major}.{sys.version_info.minor}" == python_version and here.endswith("x86_64") \
        and platform.endswith("x86_64")
    reqs = parse_lock(lock)
    built = {}
    for key in keys:
        r = reqs[key]
        if not same:
            raise MedwbError(f"{r['name']}=={r['version']} has no wheel for {platform} / Python {python_version}; "
                             f"it must be built from source on a machine of that kind (this one is {here}, Python "
                             f"{sys.version_info.major}.{sys.version_info.minor}): run `make bundle` there")
        src = wheelhouse.parent / ".sdist"
        src.mkdir(exist_ok=True)
        req = wheelhouse.parent / ".sdist.txt"
        req.write_text(f"{r['name']}=={r['version']} " + " ".join(f"--hash=sha256:{h}" for h in sorted(r["hashes"])),
                       encoding="utf-8")
        res = _pip(["download", "--no-deps", "--no-binary=:all:", "--require-hashes", "-r", str(req), "-d", str(src)], log)
        if res.returncode != 0:
            raise MedwbError(f"{r['name']}=={r['version']}: neither a wheel nor the locked source could be downloaded")
        sdist = next(src.iterdir())
        before = set(wheelhouse.glob("*.whl"))
        res = _pip(["wheel", "--no-deps", "-w", str(wheelhouse), str(sdist)], log)
        new = set(wheelhouse.glob("*.whl")) - before
        if res.returncode != 0 or len(new) != 1:
            raise MedwbError(f"{r['name']}=={r['version']}: building a wheel from its source failed: "
                             f"{res.stderr.strip().splitlines()[-1] if res.stderr.strip() else 'no wheel written'}")
        built[key] = sha256(new.pop())
        shutil.rmtree(src)
        req.unlink()
    return built


def _source_files() -> list[Path]:
    """The tracked project files (the demo model included), as git lists them."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise MedwbError(f"bundle: the project at {ROOT} is not a git checkout ({e}); bundle from a clone") from e
    # A demo-model build in progress (its training state, tens of MB) is for the project's
    # own sessions to go on with, not for a hospital's install.
    return [ROOT / n for n in names.decode().split("\0") if n and not n.startswith("data/demo-model-training/")]


def build(out: str | Path = "dist", locks=LOCKS, platform: str = PLATFORM, python_version: str = PYTHON_VERSION,
          archive: bool = False, log=print) -> Path:
    """``<out>/medwb-bundle-<version>/`` (written under a temporary name, renamed when whole)."""
    from medwb import __version__
    out = Path(out).expanduser().resolve()
    final = out / f"medwb-bundle-{__version__}"
    tmp = out / f".medwb-bundle-{__version__}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in _source_files():
        if f.is_file():
            dest = tmp / f.relative_to(ROOT)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
    wheelhouse = tmp / "wheelhouse"
    wheelhouse.mkdir()
    built_all = {}
    for lock in locks:
        lock = ROOT / lock
        log(f"wheels for {lock.name} ({platform}, Python {python_version})")
        source_only = _download(lock, wheelhouse, platform, python_version, log)
        built = _build_from_source(lock, source_only, wheelhouse, platform, python_version, log)
        if built:  # the bundle's lock also accepts the wheels built here
            text = (tmp / lock.relative_to(ROOT)).read_text(encoding="utf-8")
            for key, digest in built.items():
                name = parse_lock(lock)[key]["name"]
                text = re.sub(rf"(?m)^({re.escape(name)}==\S+)", rf"\1 --hash=sha256:{digest}", text, count=1)
            (tmp / lock.relative_to(ROOT)).write_text(text, encoding="utf-8")
            built_all.update(built)
        if gone := missing(tmp / lock.relative_to(ROOT), wheelhouse):
            raise MedwbError(f"bundle: after downloading, {lock.name} still lacks {', '.join(gone[:5])}")
    wheels = sorted(wheelhouse.glob("*.whl"))
    meta = {"medwb": __version__, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform, "python": python_version, "wheels": len(wheels),
            "wheelhouse_bytes": sum(w.stat().st_size for w in wheels), "built_from_source": sorted(built_all),
            "locks": {lk: sha256(ROOT / lk) for lk in locks}}
    (tmp / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    (tmp / "INSTALL.md").write_text(INSTALL.format(**meta, size_gb=meta["wheelhouse_bytes"] / 1e9), encoding="utf-8")
    sums = [f"{sha256(f)}  {f.relative_to(tmp)}" for f in sorted(tmp.rglob("*")) if f.is_file()]
    (tmp / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    log(f"bundle: {final} ({len(wheels)} wheels, {meta['wheelhouse_bytes'] / 1e9:.2f} GB)")
    if archive:
        target = out / f"medwb-bundle-{__version__}.tar.gz"
        part = target.with_name(target.name + ".partial")
        with tarfile.open(part, "w:gz") as tar:
            tar.add(final, arcname=final.name)
        os.replace(part, target)
        log(f"archive: {target} ({target.stat().st_size / 1e9:.2f} GB)")
    return final


INSTALL = """# Installing MedWB inside an intranet

This folder is MedWB {medwb} with every package both environments need ({wheels} wheels,
{size_gb:.2f} GB, for {platform} and Python {python}), made {created}.
Nothing here needs a network.

1. Check the copy: `sha256sum -c SHA256SUMS --quiet` (prints nothing when every file is intact).
2. Set up and run the main job on the demo model:

       make run WHEELHOUSE=wheelhouse

   (`make test WHEELHOUSE=wheelhouse` runs the test suite; `make setup WHEELHOUSE=wheelhouse`
   only installs.) pip installs with `--no-index`, every wheel checked against the hashes of
   `requirements/*.lock`.
3. Check the machine: `.venvs/main/bin/medwb doctor`.
4. Only for a cluster of the hospital's servers (`medwb bench --cluster`, docs/scale-out.md):
   `make cluster WHEELHOUSE=wheelhouse` on the workstation and on every server adds Ray.

Needs: Linux x86_64, Python {python} with venv, make. A missing wheel stops the set-up with
one line naming the package and the command that fetches it on the connected machine.
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m medwb.bundle", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="is every locked package's wheel in the wheelhouse")
    c.add_argument("lock")
    c.add_argument("wheelhouse")
    b = sub.add_parser("build", help="write dist/medwb-bundle-<version>/")
    b.add_argument("--out", default=str(ROOT / "dist"))
    b.add_argument("--platform", default=PLATFORM)
    b.add_argument("--python-version", default=PYTHON_VERSION)
    b.add_argument("--archive", action="store_true", help="also write one .tar.gz")
    args = p.parse_args(argv)
    try:
        if args.command == "check":
            check(args.lock, args.wheelhouse)
        else:
            build(args.out, platform=args.platform, python_version=args.python_version, archive=args.archive)
    except MedwbError as e:
        print(f"medwb: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
