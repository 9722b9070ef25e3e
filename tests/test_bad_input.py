"""Bad input, one table: every command and notebook parameter that takes a path, a model, a
number or a file, given something wrong. Each must answer with one line that names the
parameter (and says what to do), exit status 2, and leave the folders as they were.

docs/reliability-and-privacy.md's "Bad input" table is this table. Commands run in-process (cli.main), so the
whole table takes seconds: nothing here may reach a model.
"""
import json
import os
import sqlite3
from pathlib import Path

import pytest

from medwb import cli

# (id, argv with {tmp} for the test's folder, what the one line must contain)
CASES = [
    # --- models
    ("bench model missing", ["bench", "--model", "{tmp}/no-such-model"], "does not exist"),
    ("bench model is a file", ["bench", "--model", "{tmp}/a_file.txt"], "a_file.txt"),
    ("bench model folder is not a model", ["bench", "--model", "{tmp}/empty_dir"], "config.json"),
    ("bench unknown shape", ["bench", "--model", "shape:gpt-9"], "shape"),
    ("eval model missing", ["eval", "--model", "{tmp}/no-such-model", "--variants", "pytorch:fp32"], "does not exist"),
    ("doctor model missing", ["doctor", "--model", "{tmp}/no-such-model"], "no-such-model"),
    ("bench model of an unknown architecture", ["bench", "--model", "{tmp}/mamba_model"], "is not supported"),
    # --- variants, precisions, knobs
    ("unknown backend", ["bench", "--variants", "tensorrt:fp16"], "tensorrt"),
    ("unsupported precision", ["bench", "--variants", "pytorch:int3"], "int3"),
    ("unsupported group size", ["bench", "--variants", "openvino-genai:int4/bf16[int4_group_size=48]"], "int4_group_size"),
    ("unknown knob", ["bench", "--variants", "openvino-genai:int4/bf16[turbo=1]"], "turbo"),
    ("knob on the wrong weights", ["bench", "--variants", "openvino-genai:int8/bf16[int4_sym=false]"], "int4_sym"),
    ("eval unknown precision", ["eval", "--variants", "bigdl:int3"], "int3"),
    # --- numbers
    ("token pair malformed", ["bench", "--token-pairs", "32"], "token"),
    ("context overflow", ["bench", "--token-pairs", "100000-64"], "100000"),
    ("negative trials", ["bench", "--trials", "-1"], "trials"),
    ("negative threads", ["bench", "--threads", "-2"], "threads"),
    ("zero rounds", ["bench", "--rounds", "0"], "rounds"),
    ("zero concurrent", ["bench", "--concurrent", "0"], "concurrent"),
    ("trials not a number", ["bench", "--trials", "many"], "--trials"),
    ("negative eval limit", ["eval", "--limit", "-1"], "limit"),
    ("too few bootstrap resamples", ["eval", "--bootstrap", "5"], "bootstrap"),
    ("overhead zero cases", ["overhead", "--cases", "0"], "cases"),
    ("simulate zero days", ["feedback", "simulate", "--db", "{tmp}/sim.sqlite", "--days", "0"], "days"),
    # --- config and data files
    ("config missing", ["bench", "--config", "{tmp}/no-such.yaml"], "no-such.yaml"),
    ("config malformed", ["bench", "--config", "{tmp}/malformed.yaml"], "malformed.yaml"),
    ("config unknown parameter", ["bench", "--config", "{tmp}/unknown_key.yaml"], "tirals"),
    ("eval file missing", ["eval", "--eval-file", "{tmp}/no-such.jsonl"], "no-such.jsonl"),
    ("eval file malformed line", ["eval", "--eval-file", "{tmp}/bad_line.jsonl"], "bad_line.jsonl:2"),
    ("eval file empty", ["eval", "--eval-file", "{tmp}/empty.jsonl"], "no records"),
    ("task map malformed", ["eval", "--task-map", "no-equals-sign"], "task"),
    ("rescore a folder that is no run", ["eval", "--rescore", "{tmp}/empty_dir"], "rescore"),
    # --- output folders
    ("run dir is a file", ["bench", "--run-dir", "{tmp}/a_file.txt"], "run-dir"),
    ("run dir unwritable", ["bench", "--run-dir", "/proc/medwb-run"], "run-dir"),
    ("eval run dir unwritable", ["eval", "--run-dir", "/proc/medwb-run"], "run-dir"),
    ("demo model out unwritable", ["demo-model", "--out", "/proc/medwb-model"], "--out"),
    ("demo model force alone", ["demo-model", "--force"], "--force"),
    ("demo model recipe without rebuild", ["demo-model", "--recipe", "candidate"], "--rebuild"),
    ("demo model pause not positive", ["demo-model", "--rebuild", "--pause-after", "0"], "--pause-after"),
    ("demo model device without rebuild", ["demo-model", "--device", "cuda"], "--rebuild"),
    ("data out is a file", ["data", "--out", "{tmp}/a_file.txt"], "--out"),
    ("report out is a file", ["feedback", "{tmp}/real.sqlite", "--report", "--out", "{tmp}/a_file.txt"], "--out"),
    # --- feedback databases
    ("feedback database missing", ["feedback", "{tmp}/no-such.sqlite"], "does not exist"),
    ("feedback file is not a database", ["feedback", "{tmp}/a_file.txt"], "not a MedWB feedback database"),
    ("feedback SQLite of something else", ["feedback", "{tmp}/other.sqlite"], "not a MedWB feedback database"),
    ("simulate into a real store", ["feedback", "simulate", "--db", "{tmp}/real.sqlite"], "holds real feedback"),
    ("simulate into an unwritable folder", ["feedback", "simulate", "--db", "/proc/medwb/sim.sqlite"], "db '"),
    # --- the main job and run comparison
    ("notebook missing", ["run", "{tmp}/no-such.ipynb"], "no-such.ipynb"),
    ("parameter without a value", ["run", "-p", "trials"], "-p"),
    ("unknown notebook parameter", ["run", "-p", "trails=1"], "trails"),
    ("runs dir unwritable", ["run", "--runs-dir", "/proc/medwb-runs"], "--runs-dir"),
    ("overhead run dir unwritable", ["overhead", "--run-dir", "/proc/medwb-run"], "--run-dir"),
    ("compare runs missing", ["compare-runs", "{tmp}/no-run-a", "{tmp}/no-run-b"], "no-run-a"),
    # --- the app server
    ("app unknown workflow", ["app", "triage"], "triage"),
    ("app config missing", ["app", "--config", "{tmp}/no-such.yaml"], "no-such.yaml"),
    ("app config unknown key", ["app", "--config", "{tmp}/unknown_key.yaml"], "tirals"),
    ("app config unknown model", ["app", "--config", "{tmp}/app_bad_model.yaml"], "tensorrt"),
    ("app config negative timeout", ["app", "--config", "{tmp}/app_bad_timeout.yaml"], "generate_timeout_s"),
    ("app another address without a token", ["app", "--ip", "0.0.0.0"], "MEDWB_APP_TOKEN"),
    ("app address malformed", ["app", "--ip", "intranet"], "--ip"),
    ("app token too short", ["app", "--token-file", "{tmp}/short_token.txt"], "--token-file"),
    ("app port out of range", ["app", "--port", "70000"], "--port"),
    ("app run dir unwritable", ["app", "--run-dir", "/proc/medwb-run"], "--run-dir"),
    ("app load doctors malformed", ["app-load", "--doctors", "five"], "--doctors"),
    ("app load zero rounds", ["app-load", "--rounds", "0"], "--rounds"),
    # --- the cluster (#18); nothing here imports Ray or reaches beyond loopback
    ("bench cluster address malformed", ["bench", "--cluster", "nonsense"], "--cluster"),
    ("bench cluster port out of range", ["bench", "--cluster", "10.0.0.5:70000"], "--cluster"),
    ("bench cluster nothing listening", ["bench", "--cluster", "127.0.0.1:1"], "nothing answers"),
    ("bench cluster run of another matrix", ["bench", "--cluster", "127.0.0.1:1", "--run-dir",
                                             "{tmp}/other_cluster_run"], "another matrix"),
    ("eval cluster address malformed", ["eval", "--variants", "pytorch:fp32", "--cluster", "head"], "--cluster"),
    ("cluster join without address", ["cluster", "join"], "HOST:PORT"),
    ("cluster join a loopback head", ["cluster", "join", "127.0.0.1:6379"], "--serve"),
    ("cluster join without this server's address", ["cluster", "join", "10.0.0.5:6379"], "--ip"),
    ("cluster head port zero", ["cluster", "head", "--port", "0"], "--port"),
    ("cluster kind malformed", ["cluster", "head", "--serve", "--kind", "a b"], "--kind"),
]



def _nb01(tmp, **bad):
    from medwb.routes import bigdl as route
    return route.prepare(**{"model_path": "", "model_family": "llama", "low_bits": ["sym_int4"], "out_dir": "",
                            "threads": 0, "run_dir": str(tmp), "prompt": "", "kernel_build": "match", **bad})


def _nb02(tmp, **bad):
    from medwb.routes import openvino as route
    return route.prepare(**{"model_path": "", "weight_formats": ["int8"], "int4_group_size": 0, "int4_sym": None,
                            "inference_precision": "f32", "kv_cache_precision": "", "out_dir": "", "threads": 0,
                            "prompt": "", "run_dir": str(tmp), **bad})


def _nb03(tmp, **bad):
    from medwb import jobs
    return jobs.bench_or_load(**{"config_file": "", "records_from": "", "run_dir": str(tmp), "model": "demo",
                                "variants": ["pytorch:fp32"], "token_pairs": [[8, 4]], "trials": 1,
                                "quality_cases": 0, "threads": 0, **bad})


def _targets(**bad):
    from medwb.bench import report
    return report.check_targets(**{"latency_target_ms": 100.0, "ram_budget_gb": 16.0, "side_by_side": 3, **bad})


def _app(kind, tmp, **bad):
    from medwb.apps.diagnosis.app import DiagnosisApp
    from medwb.apps.discharge.app import DischargeApp
    app = {"04": DiagnosisApp, "05": DischargeApp}[kind]
    return app(**{"models": ["openvino-genai:int8/f32"], "run_dir": str(tmp), **bad})


def _nb06(tmp, **bad):
    from medwb import jobs
    return jobs.evaluate(**{"model": "demo", "eval_file": "", "variants": "pytorch:fp32", "limit": 1,
                             "task_map": "", "threads": 0, "bootstrap": 1000, "run_dir": str(tmp), **bad})


def _nb07(tmp, what, **bad):
    from medwb.apps import simulate, usage_report
    if what == "simulate":
        return simulate.simulate(**{"db": tmp / "sim.sqlite", "days": 1, "seed": 0,
                                    "models": ["openvino-genai:int8/f32"], **bad})
    return usage_report.build(**{"path": tmp / "real.sqlite", "period": "week", "origin": None, **bad})


# Notebook parameters: (id, the notebook's own entry call with one bad value, what the one
# line must contain). The notebooks call exactly these first, so the cell shows this line.
NOTEBOOK_CASES = [
    ("01 model_path missing", lambda t: _nb01(t, model_path=f"{t}/no-such-model"), "model_path"),
    ("01 model_family unknown", lambda t: _nb01(t, model_family="gpt5"), "gpt5"),
    ("01 low_bits unsupported", lambda t: _nb01(t, low_bits=["int3"]), "low_bits"),
    ("01 out_dir unwritable", lambda t: _nb01(t, out_dir="/proc/medwb-out"), "out_dir"),
    ("01 threads negative", lambda t: _nb01(t, threads=-1), "threads"),
    ("01 kernel_build unknown", lambda t: _nb01(t, kernel_build="avx9"), "kernel_build"),
    ("01 n_prompts zero", lambda t: _nb01(t, n_prompts=0), "n_prompts"),
    ("01 max_new_tokens negative", lambda t: _nb01(t, max_new_tokens=-4), "max_new_tokens"),
    ("02 model_path is a file", lambda t: _nb02(t, model_path=f"{t}/a_file.txt"), "a_file.txt"),
    ("02 weight format unknown", lambda t: _nb02(t, weight_formats=["int2"]), "weight_formats"),
    ("02 group size does not divide", lambda t: _nb02(t, weight_formats=["int4"], int4_group_size=48), "48"),
    ("02 inference precision unsupported", lambda t: _nb02(t, inference_precision="fp8"), "inference_precision"),
    ("02 KV-cache precision unknown", lambda t: _nb02(t, kv_cache_precision="i2"), "kv_cache_precision"),
    ("02 trials zero", lambda t: _nb02(t, trials=0), "trials"),
    ("02 stateless_input_tokens zero", lambda t: _nb02(t, stateless_input_tokens=0), "stateless_input_tokens"),
    ("03 variant unknown", lambda t: _nb03(t, variants=["tensorrt:fp16"]), "tensorrt"),
    ("03 token pair over the context", lambda t: _nb03(t, token_pairs=[[4000, 64]]), "token_pairs"),
    ("03 records_from not a run", lambda t: _nb03(t, records_from=str(t / "empty_dir")), "records_from"),
    ("03 config_file malformed", lambda t: _nb03(t, config_file=str(t / "malformed.yaml")), "malformed.yaml"),
    ("03 trials zero", lambda t: _nb03(t, trials=0), "trials"),
    ("03 quality_cases negative", lambda t: _nb03(t, quality_cases=-1), "quality_cases"),
    ("03 latency_target_ms negative", lambda t: _targets(latency_target_ms=-5), "latency_target_ms"),
    ("03 ram_budget_gb zero", lambda t: _targets(ram_budget_gb=0), "ram_budget_gb"),
    ("03 side_by_side zero", lambda t: _targets(side_by_side=0), "side_by_side"),
    ("04 models empty", lambda t: _app("04", t, models=[]), "models"),
    ("04 max_new_tokens zero", lambda t: _app("04", t, max_new_tokens=0), "max_new_tokens"),
    ("04 case_id unknown", lambda t: _app("04", t, case_id="h999999"), "h999999"),
    ("04 feedback_db is a folder", lambda t: _app("04", t, feedback_db=str(t / "empty_dir")), "feedback_db"),
    ("04 generate_timeout_s negative", lambda t: _app("04", t, generate_timeout_s=-1), "generate_timeout_s"),
    ("04 threads negative", lambda t: _app("04", t, threads=-1), "threads"),
    ("05 record_id unknown", lambda t: _app("05", t, record_id="h999999"), "h999999"),
    ("05 feedback_db not a database", lambda t: _app("05", t, feedback_db=str(t / "a_file.txt")), "feedback_db"),
    ("06 eval_file empty", lambda t: _nb06(t, eval_file=str(t / "empty.jsonl")), "no records"),
    ("06 variants unknown backend", lambda t: _nb06(t, variants="tensorrt:fp16"), "tensorrt"),
    ("06 bootstrap too few", lambda t: _nb06(t, bootstrap=10), "bootstrap"),
    ("06 limit negative", lambda t: _nb06(t, limit=-1), "limit"),
    ("06 threads negative", lambda t: _nb06(t, threads=-2), "threads"),
    ("07 simulate_days too many", lambda t: _nb07(t, "simulate", days=400), "days"),
    ("07 period unknown", lambda t: _nb07(t, "report", period="month"), "period"),
]


@pytest.mark.parametrize("call, expected", [c[1:] for c in NOTEBOOK_CASES], ids=[c[0] for c in NOTEBOOK_CASES])
def test_bad_notebook_parameters_are_one_line_naming_the_parameter_and_nothing_written(call, expected, inputs,
                                                                                       monkeypatch):
    from medwb.errors import MedwbError
    monkeypatch.chdir(inputs)
    before = _tree(inputs)
    with pytest.raises(MedwbError) as e:
        call(inputs)
    line = str(e.value)
    assert "\n" not in line and expected in line, line
    assert _tree(inputs) == before


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "a_file.txt").write_text("not what was asked for\n")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "mamba_model").mkdir()  # a complete folder of an architecture MedWB does not know
    (tmp_path / "mamba_model" / "config.json").write_text('{"model_type": "mamba"}')
    (tmp_path / "mamba_model" / "model.safetensors").write_bytes(b"")
    (tmp_path / "malformed.yaml").write_text("trials: [1, 2\n")
    (tmp_path / "unknown_key.yaml").write_text("tirals: 3\n")
    (tmp_path / "app_bad_model.yaml").write_text("models: [tensorrt:fp16]\n")
    (tmp_path / "app_bad_timeout.yaml").write_text("generate_timeout_s: -5\n")
    (tmp_path / "short_token.txt").write_text("secret\n")
    (tmp_path / "other_cluster_run" / "cluster").mkdir(parents=True)
    (tmp_path / "other_cluster_run" / "cluster" / "plan.json").write_text('{"config": {"trials": 9}}')
    good = {"input": "a", "target": "b", "answer_choices": ["x"], "task_type": "cls", "task_dataset": "MedWB-QIC",
            "sample_id": "s1"}
    (tmp_path / "bad_line.jsonl").write_text(json.dumps(good, ensure_ascii=False) + "\n{not json\n")
    (tmp_path / "empty.jsonl").write_text("")
    con = sqlite3.connect(tmp_path / "other.sqlite")
    con.execute("CREATE TABLE notes (x TEXT)")
    con.commit()
    con.close()
    from medwb.apps import feedback
    store = feedback.FeedbackStore(tmp_path / "real.sqlite")  # a doctor's round and open event
    store.event("differential_diagnosis", "s", "ui", "c1", "open",
                store.new_round("differential_diagnosis", "s", {"chief_complaint": "x"}, "t", 8, record_ref="c1"))
    store.close()
    return tmp_path


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_parameter_status_2_and_nothing_written(argv, expected, inputs,
                                                                                 monkeypatch, capsys):
    monkeypatch.chdir(inputs)
    monkeypatch.setenv("MEDWB_RUNS", str(inputs / "runs"))  # a default run folder would appear here
    before = _tree(inputs)
    argv = [a.replace("{tmp}", str(inputs)) for a in argv]
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's own checks
        status = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    assert expected.replace("{tmp}", str(inputs)) in lines[0] and "error" in lines[0], lines[0]
    assert _tree(inputs) == before  # nothing half-written, nothing new


@pytest.mark.parametrize("value", ["0", "two", "-1", "1.5"])
def test_a_bad_thread_cap_is_refused_before_any_command_runs(value, inputs, monkeypatch, capsys):
    """MEDWB_THREADS caps the threads of every model process where none is asked for (a shared
    server; two tests at once); a value that is not a whole number >= 1 is one line, status 2."""
    from medwb import sysinfo
    monkeypatch.chdir(inputs)
    monkeypatch.setenv("MEDWB_RUNS", str(inputs / "runs"))
    monkeypatch.setenv("MEDWB_THREADS", value)
    before = _tree(inputs)
    status = cli.main(["bench", "--variants", "pytorch:fp32"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "MEDWB_THREADS" in lines[0] and "whole number" in lines[0], lines
    assert _tree(inputs) == before
    monkeypatch.setenv("MEDWB_THREADS", "3")
    assert sysinfo.default_threads() == 3
    monkeypatch.delenv("MEDWB_THREADS")
    assert sysinfo.default_threads() == (os.cpu_count() or 1)


def test_the_table_is_long_enough_and_in_the_docs():
    assert len(CASES) >= 30
    page = (Path(__file__).resolve().parents[1] / "docs" / "reliability-and-privacy.md").read_text(encoding="utf-8")
    section = page.split("### Bad input", 1)[1].split("\n## ", 1)[0]
    missing = [c[0] for c in CASES + NOTEBOOK_CASES if f"| {c[0]} |" not in section]
    assert missing == [], f"add these rows to docs/reliability-and-privacy.md's bad-input table: {missing}"


READ_ONLY_CHECK = """
import sys
from medwb.apps import feedback
from medwb.errors import MedwbError
try:
    feedback.FeedbackStore(sys.argv[1])
except MedwbError as e:
    print(e)
"""


def test_a_read_only_database_is_refused_before_anything_runs(tmp_path):
    """A read-only file (as a user), or a read-only mount (as root, who writes any file)."""
    import shutil
    import subprocess
    import sys
    from medwb.apps import feedback
    folder = tmp_path / "store"
    folder.mkdir()
    db = folder / "fb.sqlite"
    feedback.FeedbackStore(db).close()
    if os.geteuid() != 0:
        db.chmod(0o444)
        command = [sys.executable, "-c", READ_ONLY_CHECK, str(db)]
    elif shutil.which("unshare") and shutil.which("mount"):
        script = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && "
                  f"exec {sys.executable} -c '{READ_ONLY_CHECK}' {db}")
        command = ["unshare", "-m", "sh", "-c", script]
    else:
        pytest.skip("root, and no unshare/mount for a read-only mount")
    before = sorted(p.name for p in folder.iterdir())
    out = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if out.returncode != 0 and "mount" in out.stderr:
        pytest.skip(f"no permission for a read-only mount here: {out.stderr.strip()[-200:]}")
    assert "feedback_db" in out.stdout and "not writable" in out.stdout, out.stdout + out.stderr
    assert sorted(p.name for p in folder.iterdir()) == before
