"""Run manifests, `medwb compare-runs`, and the machine-load check."""
import json
import subprocess
import sys
import time

from medwb import provenance, sysinfo
from medwb.bench import records


def _run(tmp_path, name, md5s, parameters=None):
    run = tmp_path / name
    provenance.write(run, parameters or {"notebooks": ["03_compare.ipynb"]})
    recs = [{"record_type": "run"}] + [
        {"record_type": "variant", "variant": v, "n_prompt_tokens": 32, "n_new_tokens": 64,
         "output_md5": md5, "tpot_ms": 10.0 + i} for i, (v, md5) in enumerate(md5s.items())]
    records.write_records(recs, run, "bench")
    return run


def test_manifest_names_commit_locks_cpu_model_and_parameters(tmp_path):
    m = provenance.write(tmp_path / "r", {"x": 1})
    assert len(m["git"]["commit"]) == 40 and isinstance(m["git"]["dirty"], bool)
    assert all(len(h) == 64 for h in m["lock_files"].values())
    assert m["cpu"]["model"] and "avx2" in m["cpu"]["flags"]
    assert m["demo_model"]["data_hash"] and "model.safetensors" in m["demo_model"]["files"]
    assert m["parameters"] == {"x": 1} and "quiet" in m["machine_load"]
    assert json.loads((tmp_path / "r" / "manifest.json").read_text())["parameters"] == {"x": 1}


def test_compare_runs_reports_identical_and_differing_outputs_and_why(tmp_path):
    a = _run(tmp_path, "a", {"pytorch:fp32": "aa", "openvino-genai:int4/bf16": "bb"})
    b = _run(tmp_path, "b", {"pytorch:fp32": "aa", "openvino-genai:int4/bf16": "cc"}, {"notebooks": ["other"]})
    c = provenance.compare(a, b)
    assert len(c["outputs_identical"]) == 1 and "pytorch:fp32" in c["outputs_identical"][0]
    assert len(c["outputs_differ"]) == 1 and "openvino-genai:int4/bf16" in c["outputs_differ"][0]
    assert any(r.startswith("parameters differ") for r in c["why_they_may_differ"])
    assert not any("git commit" in r or "CPU" in r for r in c["why_they_may_differ"])
    out = subprocess.run([sys.executable, "-m", "medwb", "compare-runs", str(a), str(b)], capture_output=True, text=True)
    assert out.returncode == 1 and "1 identical, 1 differ" in out.stdout and "DIFFERS" in out.stdout
    same = _run(tmp_path, "c", {"pytorch:fp32": "aa", "openvino-genai:int4/bf16": "bb"})
    out = subprocess.run([sys.executable, "-m", "medwb", "compare-runs", str(a), str(same)], capture_output=True, text=True)
    assert out.returncode == 0 and "2 identical, 0 differ" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "medwb", "compare-runs", str(a), str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "RUN_B" in bad.stderr


def test_a_busy_process_makes_the_machine_not_quiet():
    """A busy process that is not ours (detached: our own workers are left out)."""
    import os
    import signal
    pid = int(subprocess.run(["sh", "-c", f"{sys.executable} -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                             capture_output=True, text=True, check=True).stdout)
    try:
        time.sleep(0.3)
        load = sysinfo.machine_load(interval_s=1.0)
    finally:
        os.kill(pid, signal.SIGKILL)
    assert not load["quiet"]
    assert pid in [b["pid"] for b in load["busy_processes"]]
    warning = sysinfo.load_warning(load)
    assert warning.startswith("warning: the machine is not quiet") and f"pid {pid}" in warning
