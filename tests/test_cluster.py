"""The matrix on a Ray cluster (#18): a local cluster on 127.0.0.1 (Ray's own test-cluster
utilities), nodes removed mid-run, a driver killed mid-run, the run folder resumed and read by
notebook 03; the evaluation in shards; and no Ray at all without --cluster."""
import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medwb.cluster import nodes as cluster_nodes

# `make test` runs two pytest-xdist workers; this module's tests stay on one of them:
# in file order, since `medwb cluster stop` ends all of this machine's Ray before the module's
# cluster starts, and the module's probe checks look at this machine's processes.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]  # slow: loads or converts models, runs notebooks or servers

REPO = Path(__file__).resolve().parents[1]
MEDWB = [sys.executable, "-m", "medwb.cli"]
VARIANTS = "pytorch:fp32,openvino-genai:int8/bf16"  # the reference and a converted artifact


def test_ray_is_imported_only_inside_medwb_cluster_and_that_only_lazily():
    """Without --cluster nothing can import Ray: only medwb/cluster imports it, and no module
    outside medwb/cluster imports medwb.cluster at module level."""
    for path in sorted((REPO / "medwb").rglob("*.py")):
        inside = "cluster" in path.relative_to(REPO / "medwb").parts[:1]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                if name.split(".")[0] == "ray":
                    assert inside, f"{path}: imports {name} outside medwb/cluster"
        if not inside:
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    assert not (mod or "").startswith("medwb.cluster"), f"{path}: imports {mod} at module level"


def test_a_local_bench_and_eval_import_no_ray(tmp_path):
    (tmp_path / "small.yaml").write_text("bandwidth_mb: 64\n", encoding="utf-8")
    code = ("import sys; from medwb import cli\n"
            f"assert cli.main(['bench', '--variants', 'pytorch:fp32', '--token-pairs', '8-4', '--trials', '1', "
            f"'--config', {str(tmp_path / 'small.yaml')!r}, "
            f"'--quality-cases', '0', '--run-dir', {str(tmp_path / 'b')!r}, '--no-progress']) == 0\n"
            "from medwb.eval import run\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]


def test_the_cluster_commands_start_report_refuse_and_stop_a_one_machine_cluster(tmp_path):
    """`medwb cluster head --serve`, `status`, `join` and `stop` as docs/scale-out.md shows them,
    on loopback. Placed before the module's cluster is made: `stop` ends this machine's Ray."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"127.0.0.1:{port}"
    env = {**os.environ, cluster_nodes.TOKEN_ENV: str(tmp_path / "token")}

    def medwb(*args, timeout=180):
        return subprocess.run(MEDWB + ["cluster", *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)

    try:
        res = medwb("head", "--ip", "127.0.0.1", "--port", str(port), "--serve", "--kind", "test-k", "--cores", "1")
        assert res.returncode == 0 and f"medwb cluster join {address}" in res.stdout, (res.stdout + res.stderr)[-2000:]
        res = medwb("status", address)
        assert res.returncode == 0 and "test-k: 1 node(s), 1 CPUs each" in res.stdout, \
            (res.stdout + res.stderr)[-2000:]
        res = medwb("join", address, "--ip", "127.0.0.1")  # Ray joins no second node on loopback: said why
        err = res.stderr.strip().splitlines()
        assert res.returncode == 2 and len(err) == 1 and "--serve" in err[0], res.stderr
    finally:
        res = medwb("stop")
    assert res.returncode == 0, (res.stdout + res.stderr)[-2000:]
    assert medwb("status", address, timeout=120).returncode != 0  # nothing listens any more


# ---------------------------------------------------------------- the cluster
@pytest.fixture(scope="module")
def cluster():
    os.environ.update(cluster_nodes.ray_env("127.0.0.1:1"))  # loopback only, no usage stats
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1",
                                                      "include_dashboard": False})
    try:
        yield c
    finally:
        c.shutdown()


def add(c, kind: str):
    return c.add_node(num_cpus=1, resources={cluster_nodes.KIND_PREFIX + kind: 1}, node_ip_address="127.0.0.1")


def results(run_dir: Path) -> list[dict]:
    path = run_dir / "cluster" / "results.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def running(run_dir: Path, proc: subprocess.Popen) -> dict:
    """What this driver (not an earlier one) says runs where."""
    try:
        progress = json.loads((run_dir / "cluster" / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return progress["running"] if progress["driver_pid"] == proc.pid else {}


def probes() -> list:
    """The benchmark probes running now on this machine that this test process started (through
    its Ray nodes): they inherit its PYTEST_XDIST_WORKER, so another worker's probes are not
    counted (without xdist, every probe)."""
    import psutil
    found, ours = [], os.environ.get("PYTEST_XDIST_WORKER")
    for p in psutil.process_iter(["cmdline"]):
        if "medwb.bench.probe" in " ".join(p.info["cmdline"] or []):
            try:
                if p.environ().get("PYTEST_XDIST_WORKER") == ours:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass  # ended meanwhile, or not ours to read
    return found


def driver(address: str, run_dir: Path, config: Path) -> subprocess.Popen:
    return subprocess.Popen(MEDWB + ["bench", "--cluster", address, "--config", str(config), "--variants", VARIANTS,
                                     "--run-dir",
                                     str(run_dir), "--no-progress"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_until(proc: subprocess.Popen, condition, what: str, timeout: float = 400):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert proc.poll() is None, f"driver ended before {what}:\n{proc.stdout.read()[-3000:]}"
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_the_matrix_survives_lost_nodes_and_a_killed_driver(cluster, tmp_path):
    run_dir = tmp_path / "run"
    config = tmp_path / "bench.yaml"
    # no compute floor: ~2.5 s of kernel timing a probe, which test_bench covers
    config.write_text("token_pairs: [[16, 8]]\ntrials: 1\nquality_cases: 1\nbandwidth_mb: 64\ntimeout_s: 600\n"
                      "compute_floor: false\n",
                      encoding="utf-8")
    a1, a2 = add(cluster, "test-a"), add(cluster, "test-a")
    address = cluster.address

    # 1. A node dies while it times a variant: Ray runs that task again on the other node of
    #    its kind, and the record says so.
    proc = driver(address, run_dir, config)
    wait_until(proc, lambda: a2.node_id in running(run_dir, proc).values(), "a task on the second node")
    cluster.remove_node(a2)
    out = finish(proc)
    first = {e["key"]: e for e in results(run_dir)}
    assert len(first) == 2 and all("error" not in e["result"] for e in first.values()), out[-3000:]
    retried = [e for e in first.values() if len(e["attempts"]) > 1]
    assert retried and retried[0]["attempts"][0]["node_id"] == a2.node_id, first
    assert retried[0]["node"]["node_id"] == a1.node_id and "attempt 2" in out

    # 2. A server of a second kind joins; the driver, killed after its first result there,
    #    resumes from the run folder without measuring anything twice; then the only node of
    #    that kind dies mid-task: what it ran, and what waited, end as error records.
    b1 = add(cluster, "test-b")
    proc = driver(address, run_dir, config)
    wait_until(proc, lambda: len(results(run_dir)) > 2 and probes(), "a first result, then a probe running")
    orphans = probes()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone = time.monotonic() + 30  # the killed driver's tasks are cancelled, their probes reaped
    while any(p.is_running() and p.status() != "zombie" for p in orphans) and time.monotonic() < gone:
        time.sleep(0.5)
    assert not any(p.is_running() and p.status() != "zombie" for p in orphans), orphans
    proc = driver(address, run_dir, config)
    wait_until(proc, lambda: b1.node_id in running(run_dir, proc).values(), "a task of the resumed run")
    cluster.remove_node(b1)
    out = finish(proc)
    latest = {e["key"]: e for e in results(run_dir)}
    assert len(latest) == 4, out[-3000:]  # every variant of both kinds ended with a record
    lost = [e for e in latest.values() if "error" in e["result"]]
    assert lost and all("no node of server kind test-b" in e["result"]["error"] for e in lost), lost
    assert [r for r in results(run_dir) if r["key"] in first] == list(first.values())  # not measured again

    # 3. A node of that kind joins again: the same run folder measures only what failed.
    add(cluster, "test-b")
    out = finish(driver(address, run_dir, config))
    every = results(run_dir)
    final = {e["key"]: e for e in every}
    assert sorted(final) == sorted(f"{k}|{v}|0" for k in ("test-a", "test-b") for v in VARIANTS.split(","))
    assert all("error" not in e["result"] for e in final.values()), out[-3000:]
    assert len(every) == 4 + len(lost)

    # 4. The records: node, CPU model and flags, bandwidth per record; both server kinds.
    records = [json.loads(x) for x in (run_dir / "records" / "bench.jsonl").read_text().splitlines()]
    variant_records = [r for r in records if r.get("record_type") == "variant"]
    assert len(variant_records) == 4 and not any(r.get("error") for r in variant_records)
    for r in variant_records:
        assert r["server"] in ("test-a", "test-b") and r["node"] and r["node_ip"] == "127.0.0.1"
        assert r["cpu"]["model"] and isinstance(r["cpu"]["flags"], list) and r["bandwidth_read_gb_s"] > 0
        assert r["tpot_ms"] > 0 and r["quality"]
    assert sorted(records[0]["cluster"]["servers"]) == ["test-a", "test-b"]

    # 5. Notebook 03 reads the run folder: servers side by side in its report.
    import papermill as pm
    pm.execute_notebook(str(REPO / "notebooks/03_compare.ipynb"), str(tmp_path / "03.ipynb"), kernel_name="medwb-main",
                        parameters={"records_from": str(run_dir), "run_dir": str(run_dir),
                                    "latency_target_ms": 1000.0}, progress_bar=False,
                        cwd=str(REPO))
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Servers side by side" in html and "test-a" in html and "test-b" in html

    # 6. Every port the cluster opened listens on loopback only.
    import psutil
    for p in psutil.Process().children(recursive=True):
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN:
                assert conn.laddr.ip.removeprefix("::ffff:") == "127.0.0.1", (p.name(), conn.laddr)


def test_the_evaluation_runs_in_shards_and_shares_the_answer_cache(cluster, tmp_path):
    if not cluster.worker_nodes:  # run on its own: the first test left none
        add(cluster, "test-a")
    env = {**os.environ, "MEDWB_CACHE": str(tmp_path / "cache")}  # the driver's answer cache: empty
    args = ["eval", "--variants", "openvino-genai:int8/bf16", "--limit", "1", "--bootstrap", "100", "--no-progress"]
    res = subprocess.run(MEDWB + args + ["--cluster", cluster.address, "--run-dir", str(tmp_path / "c")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert "shards over" in res.stdout
    answers = [json.loads(x) for f in (tmp_path / "cache" / "eval").rglob("*.jsonl")
               for x in f.read_text(encoding="utf-8").splitlines()]
    assert answers and all(a["node_ip"] == "127.0.0.1" and a["cpu"] and a["node"] for a in answers)
    samples = (tmp_path / "c" / "eval" / "samples").glob("*.jsonl")
    assert all(json.loads(x)["answered"] for f in samples for x in f.read_text(encoding="utf-8").splitlines())
    # The same evaluation on this machine (one thread, as the shards) finds every answer cached.
    res = subprocess.run(MEDWB + args + ["--threads", "1", "--run-dir", str(tmp_path / "l")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "answers cached (no model loaded)" in res.stdout, res.stdout[-2000:]



def test_an_intranet_cluster_without_the_token_is_refused_before_any_connection(tmp_path, monkeypatch, capsys):
    from medwb import cli
    monkeypatch.setenv(cluster_nodes.TOKEN_ENV, str(tmp_path / "no-token"))
    for argv in (["bench", "--cluster", "10.0.0.5:6379", "--run-dir", str(tmp_path / "r")],
                 ["cluster", "join", "10.0.0.5:6379", "--ip", "10.0.0.21"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no cluster token" in err[0] and "no-token" in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_knob_is_read_against_its_default_on_the_same_server_kind():
    from medwb.bench import tuning

    def rec(server, knobs, tpot):
        return {"record_type": "variant", "variant": "v", "base_variant": "openvino-genai:int4/bf16", "knobs": knobs,
                "input_tokens": 16, "output_tokens": 8, "tpot_ms": tpot, "server": server,
                "tpot_ms_trials": [tpot, tpot * 1.01, tpot * 0.99]}
    # The knob helps on kind a and not on b; pooled across kinds it would read as one effect.
    effects = tuning.knob_effects([rec("a", {}, 10), rec("a", {"int4_sym": False}, 8),
                                   rec("b", {}, 20), rec("b", {"int4_sym": False}, 21)])
    assert dict(zip(effects["server"], effects["speedup"])) == {"a": 1.25, "b": round(20 / 21, 3)}
    text = tuning.verdict_text(tuning.verdicts(effects))
    assert "int4_sym=false on a" in text and "int4_sym=false on b" in text
