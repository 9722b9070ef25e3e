"""The main job: every notebook into runs/<timestamp>/, runs/latest, failures recorded."""
import json
import os
import sqlite3
import subprocess
import sys

import nbformat
import pytest

from conftest import isolated, outside_connections
from medwb import runner
from medwb.apps import feedback


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('run_dir = ""', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "medwb-main", "display_name": "MedWB main", "language": "python"}
    nbformat.write(nb, path)
    return path


# Every notebook runs headless in its own tests. Here the main job runs the ones that share
# the run folder (the environment check, both apps writing one feedback store, the usage
# report reading it) with small settings; `make run` runs all of them with their defaults
# (README: quick start), and notebooks 01-03 and 06 (routes, benchmark, evaluation: 10 of
# the suite's minutes again) are left to their own tests.
SHARED = ["00_environment_check.ipynb", "04_differential_diagnosis.ipynb", "05_discharge_record.ipynb",
          "07_usage_report.ipynb"]
SMALL = ["fit_study_records=2", "simulate_days=3", "max_new_tokens=64"]


@pytest.mark.slow
def test_main_job_runs_the_notebooks_into_one_run_folder(tmp_path, demo_model_dir):
    notebooks = [str(runner.NOTEBOOKS_DIR / name) for name in SHARED]
    # Privacy (the faults issue): inside a loopback-only network namespace, every Python
    # process (kernels, app workers in both environments) recording its connect() calls.
    net = tmp_path.parent / f"{tmp_path.name}-net.jsonl"
    command, env = isolated([sys.executable, "-m", "medwb", "run", *notebooks, "--runs-dir", str(tmp_path)]
                            + [a for kv in SMALL for a in ("-p", kv)], net)
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert outside_connections(net) == []
    latest = tmp_path / "latest"
    assert latest.is_symlink() and latest.resolve().parent == tmp_path.resolve()
    summary = json.loads((latest / "summary.json").read_text())
    names = [r["notebook"] for r in summary["notebooks"]]
    assert names == SHARED and set(SHARED) <= {p.name for p in runner.discover()}
    assert all(r["status"] == "ok" for r in summary["notebooks"])
    for name in names:
        assert (latest / name).exists()
    assert (latest / "environment.json").exists()  # run_dir reached the notebook
    manifest = json.loads((latest / "manifest.json").read_text())
    assert manifest["kind"] == "main job" and len(manifest["git"]["commit"]) == 40
    assert manifest["parameters"]["notebooks"] == names and manifest["demo_model"]["data_hash"]
    assert manifest["parameters"]["overrides"]["max_new_tokens"] == 64  # typed, not a string
    # the run compares with itself as identical (the check a reproducibility job runs)
    same = subprocess.run([sys.executable, "-m", "medwb", "compare-runs", str(latest), str(latest)],
                          capture_output=True, text=True)
    assert same.returncode == 0 and " 0 differ" in same.stdout
    assert str(latest.resolve()) in out.stdout
    # notebook 04 with its default models: three workers (both routes) answered the bundled
    # case, and every kind of doctor action reached the feedback database
    db = sqlite3.connect(latest / "feedback.sqlite")
    first = db.execute("SELECT backend, status FROM outputs WHERE round_id = 1 ORDER BY slot").fetchall()
    assert first == [("openvino-genai", "ok"), ("openvino-genai", "ok"), ("bigdl", "ok")]
    assert {a for (a,) in db.execute("SELECT DISTINCT action FROM actions")} == set(feedback.ACTIONS)
    assert (latest / "feedback_summary.csv").read_text().count("\n") == 4  # header + 3 models
    # notebook 05 wrote into the same store; notebook 07 reported on it and on a simulated month
    workflows = {w for (w,) in db.execute("SELECT DISTINCT workflow FROM rounds")}
    assert workflows == {"differential_diagnosis", "discharge_record"}
    assert "discharge_record" in (latest / "usage_report" / "usage_by_workflow.csv").read_text(encoding="utf-8")
    assert "SIMULATED" in (latest / "usage_report_simulated" / "usage_report.html").read_text(encoding="utf-8")


def test_a_failing_notebook_is_recorded_and_the_rest_still_run(tmp_path):
    nbs = [_notebook(tmp_path / "01_fails.ipynb", "raise ValueError('boom')"),
           _notebook(tmp_path / "02_ok.ipynb", "open('ok.txt', 'w').write('fine')")]
    run, records = runner.run_all(nbs, tmp_path / "runs", log=lambda *_: None)
    assert [r["status"] for r in records] == ["failed", "ok"]
    assert "boom" in records[0]["error"]
    assert (run / "ok.txt").read_text() == "fine"  # notebooks run inside their run folder
    assert os.readlink(tmp_path / "runs" / "latest") == run.name


def test_unknown_notebook_parameter_is_rejected(tmp_path):
    nb = _notebook(tmp_path / "01_x.ipynb", "pass")
    out = subprocess.run([sys.executable, "-m", "medwb", "run", str(nb), "--runs-dir", str(tmp_path / "r"),
                          "-p", "modle_path=/x"], capture_output=True, text=True)
    assert out.returncode == 2
    assert "modle_path" in out.stderr and "declares run_dir" in out.stderr
    from medwb import cli
    assert cli.parse_params(["trials=1", "ok=False", "pairs=[[32, 8]]", "name=x=y"]) == {
        "trials": 1, "ok": False, "pairs": [[32, 8]], "name": "x=y"}
