"""#19 air-gapped install: the bundle, installing from a wheelhouse with no index (in a
network namespace with loopback only where the kernel allows one), and medwb doctor."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medwb import bundle, cli, doctor

pytestmark = pytest.mark.slow  # loads or converts models, runs notebooks or servers

REPO = Path(__file__).resolve().parents[1]


def _lock(path: Path, entries: dict[str, tuple[str, str]]) -> Path:
    path.write_text("".join(f"{name}=={version} \\\n    --hash=sha256:{digest}\n"
                            for name, (version, digest) in entries.items()), encoding="utf-8")
    return path


def test_the_lock_files_parse_with_their_hashes():
    main = bundle.parse_lock(REPO / "requirements/main.lock")
    assert main["torch"]["version"] == "2.13.0+cpu" and len(main["torch"]["hashes"]) >= 1
    assert all(r["hashes"] for r in main.values())
    assert bundle.parse_lock(REPO / "requirements/bigdl.lock")["bigdl-llm"]["version"] == "2.4.0"


def test_a_missing_wheel_is_one_line_naming_it_and_the_fetch_command(tmp_path):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    wheel = house / "tiny_pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(b"not really a wheel, but hashed")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    lock = _lock(tmp_path / "x.lock", {"tiny-pkg": ("1.0", digest), "other_pkg": ("2.0", "0" * 64)})
    assert bundle.missing(lock, house) == ["other_pkg==2.0"]
    res = subprocess.run([sys.executable, "-m", "medwb.bundle", "check", str(lock), str(house)], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "no wheel for other_pkg==2.0" in res.stderr and "pip download" in res.stderr and "make bundle" in res.stderr
    wheel.write_bytes(b"tampered")  # a wheel whose hash is not locked counts as missing
    assert bundle.missing(lock, house) == ["tiny-pkg==1.0", "other_pkg==2.0"]
    res = subprocess.run([sys.executable, "-m", "medwb.bundle", "check", str(lock), str(tmp_path / "nope")],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 2 and "is not a folder" in res.stderr


def test_make_setup_with_a_wheelhouse_never_asks_an_index():
    res = subprocess.run(["make", "-n", "-B", "setup", "WHEELHOUSE=wheelhouse"], cwd=REPO, capture_output=True,
                         text=True)
    installs = [line for line in res.stdout.splitlines() if "pip install" in line]
    # main, bigdl and ipex: each its lock, then medwb itself
    assert len(installs) == 6 and all("--no-index --find-links" in line and "PIP_CONFIG_FILE=/dev/null" in line
                                      for line in installs)
    assert res.stdout.count("medwb.bundle check") == 3
    for target, lock in (("cluster", "cluster.lock"), ("serve", "serve.lock")):  # the main env's extras
        res = subprocess.run(["make", "-n", "-B", target, "WHEELHOUSE=wheelhouse"], cwd=REPO, capture_output=True,
                             text=True)
        installs = [line for line in res.stdout.splitlines() if "pip install" in line and lock in line]
        assert len(installs) == 1 and "--no-index --find-links" in installs[0] \
            and "PIP_CONFIG_FILE=/dev/null" in installs[0], (target, res.stdout)


def test_doctor_passes_here_and_fails_on_a_proxy_variable(monkeypatch, capsys):
    rows = {r["check"]: r for r in doctor.checks()}
    assert {k for k, r in rows.items() if r["status"] == "FAIL"} == set(), rows
    assert rows["demo model"]["status"] == "PASS" and "GiB available" in rows["memory"]["detail"]
    from medwb.backends.llamacpp import unavailable  # optional: a warning where it could not be built
    assert rows["llama.cpp (peer variant)"]["status"] == ("WARN" if unavailable() else "PASS")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  no network variables" in out and "HTTPS_PROXY" in out
    assert cli.main(["doctor", "--model", "/no/such/folder"]) == 2


def test_a_bundle_installs_the_main_environment_with_no_network(tmp_path):
    """Bundle the main lock (pip serves the wheels from its local cache, filled by
    `make setup`), then install from the bundle alone: no index, pip's configuration
    ignored, and inside a network namespace with loopback only where one can be made."""
    out = bundle.build(tmp_path / "dist", locks=("requirements/main.lock",), log=lambda *_: None)
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["wheels"] == len(bundle.parse_lock(REPO / "requirements/main.lock"))
    assert (out / "data/demo-model/model.safetensors").exists() and (out / "INSTALL.md").exists()
    assert not (out / "data/demo-model-training").exists()  # a build in progress is not installed
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS", "--quiet"], cwd=out, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr

    isolate = ["unshare", "-n"] if shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0 else []
    venv = tmp_path / "main-env"
    env = {**os.environ, "PIP_CONFIG_FILE": "/dev/null", "PIP_NO_INDEX": "1"}
    env.pop("PIP_FIND_LINKS", None)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-compile: byte-compiling the thousands of sources (torch alone) is slow and
    # decides nothing here (Python compiles on first import).
    pip = [*isolate, str(venv / "bin/pip"), "install", "--disable-pip-version-check", "-q", "--no-index",
           "--no-compile", "--find-links", str(out / "wheelhouse")]
    for args in (["--require-hashes", "--no-deps", "-r", str(out / "requirements/main.lock")],
                 ["--no-deps", "--no-build-isolation", "-e", str(out)]):
        res = subprocess.run(pip + args, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    probe = subprocess.run([*isolate, str(venv / "bin/python"), "-c",
                            "import medwb, openvino, transformers; print(medwb.__file__)"],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 0 and probe.stdout.strip().startswith(str(out)), probe.stderr[-2000:]
    res = subprocess.run([*isolate, str(venv / "bin/medwb"), "doctor", "--json"], capture_output=True, text=True,
                         env={**env, "MEDWB_MAIN_PYTHON": str(venv / "bin/python")}, cwd=tmp_path)
    rows = {r["check"]: r for r in json.loads(res.stdout)["checks"]}
    assert rows["main environment"]["status"] == "PASS" and "openvino" in rows["main environment"]["detail"]
    assert rows["demo model"]["status"] == "PASS" and rows["no network variables"]["status"] == "PASS"
