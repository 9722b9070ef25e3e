"""`medwb eval` / notebook 06: resume after a crash, a rerun from the cache without any model,
rescoring, bad input, and the notebook end to end on FP32 and a low-bit variant of each route."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import papermill as pm
import pytest

from medwb import jsonl
from medwb.eval import guard, report, scoring
from medwb.eval import run as evaluation
from medwb.tasks import evalset

REPO = Path(__file__).resolve().parents[1]
NB = REPO / "notebooks" / "06_evaluate.ipynb"


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "medwb", "eval", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600, **kw)


@pytest.mark.slow
def test_a_crash_loses_only_unfinished_samples_and_a_rerun_resumes_then_needs_no_model(
        tmp_path, demo_model_dir, monkeypatch):
    params = dict(variants="pytorch:fp32", limit=1, threads=1, bootstrap=200,
                  answers_cache=str(tmp_path / "answers"), progress=False)
    monkeypatch.setenv("MEDWB_FAULT_EVAL_AFTER", "3")  # the worker dies after 3 of 7 answers
    logs: list[str] = []
    first = evaluation.run(run_dir=tmp_path / "a", log=logs.append, **params)
    assert "pytorch:fp32" in first["errors"] and "4 of 7 samples unanswered" in first["errors"]["pytorch:fp32"]
    assert first["verdicts"]["pytorch:fp32"].startswith("incomplete")
    assert sum(r["answered"] for r in first["rows"]["pytorch:fp32"]) == 3

    monkeypatch.delenv("MEDWB_FAULT_EVAL_AFTER")
    logs.clear()
    second = evaluation.run(run_dir=tmp_path / "b", log=logs.append, **params)
    assert "pytorch:fp32: 3 answers cached, 4 to generate" in logs and not second["errors"]
    overall = second["scores"].query("task == 'overall'")
    assert overall.complete.all() and overall.score.notna().all()

    def no_model(*a, **k):
        raise AssertionError("a cached run must not start a worker")
    monkeypatch.setattr(evaluation, "answer_missing", no_model)
    monkeypatch.setattr(evaluation, "prepare", no_model)
    third = evaluation.run(run_dir=tmp_path / "c", log=logs.append, **params)
    cols = ["variant", "task", "score", "ci_low", "ci_high"]
    assert third["scores"][cols].equals(second["scores"][cols])
    rescored = evaluation.rescore(tmp_path / "b", log=logs.append)
    assert rescored["scores"][cols].equals(second["scores"][cols])
    # Per-sample logs: prompt hash, output, parsed answer, parse failure, score.
    lines = (tmp_path / "b" / "eval" / "samples" / "pytorch_fp32.jsonl").read_text(encoding="utf-8").splitlines()
    row = json.loads(lines[0])
    assert len(lines) == 7 and {"prompt_hash", "output", "answer", "parse_failed", "score"} <= set(row)


def test_a_half_written_cache_line_is_asked_again(tmp_path):
    cache = tmp_path / "c.jsonl"
    cache.write_text('{"key": "a", "output": "x"}\n{"key": "b", "outp', encoding="utf-8")
    assert set(evaluation.read_cache(cache)) == {"a"}
    jsonl.end_with_newline(cache)
    with open(cache, "a", encoding="utf-8") as f:
        f.write('{"key": "b", "output": "y"}\n')
    assert evaluation.read_cache(cache)["b"]["output"] == "y"


def test_guard_pairs_the_difference_and_names_the_tasks_below(tmp_path):
    # Two label tasks, 40 samples: FP32 right on all, the variant wrong on 10 of task B.
    specs = {"A": scoring.task_spec("MedWB-QIC"), "B": scoring.task_spec("MedWB-QIC")}
    def rows(wrong_b):
        out = []
        for t in ("A", "B"):
            for i in range(40):
                pred = "骨科" if (t == "B" and i < wrong_b) else "妇科"
                out.append({"task": t, "answered": True, "parse_failed": False,
                            "_stats": ("妇科", pred)})
        return out
    scores, verdicts = guard.evaluate({"fp32": rows(0), "int4": rows(10)}, specs, reference="fp32",
                                      resamples=300)
    b = scores.query("variant == 'int4' and task == 'B'").iloc[0]
    # macro-F1 over {妇科, 骨科}: 妇科 P=1 R=30/40 -> F1=0.857; 骨科 F1=0 -> macro 0.4286
    assert b.score == pytest.approx(0.428571, abs=1e-5) and b.kept == pytest.approx(0.428571, abs=1e-5)
    assert b.diff_high < 0  # beyond noise
    # Overall -28.6 points, its whole interval below the 5% margin; task B beyond its own margin.
    assert verdicts["int4"].startswith("loses accuracy: overall -28.6 points vs FP32")
    assert "beyond the margin on B (-57.1 [" in verdicts["int4"]
    assert guard.decision(verdicts["int4"]) == guard.LOSES
    assert verdicts["fp32"] == "reference (FP32)"
    paths = report.write(tmp_path, scores, verdicts)
    assert "loses accuracy" in paths["html"].read_text(encoding="utf-8")


def test_the_guard_decides_keeps_loses_or_not_enough_samples_from_the_paired_interval():
    """One two-label task, FP32 right on all: a variant wrong on 1 of 200 keeps accuracy (the
    whole interval of the difference above -5%); wrong on 1 of 12 the interval spans the margin:
    not enough samples, its own outcome, not a failure; wrong on 6 of 12 it loses."""
    spec = scoring.task_spec("MedWB-QIC")
    labels = ("妇科", "骨科")

    def rows(n, wrong):
        return [{"task": "A", "answered": True, "parse_failed": False,
                 "_stats": (labels[i % 2], labels[(i + (i < wrong)) % 2])} for i in range(n)]

    def decide(n, wrong):
        _, verdicts = guard.evaluate({"fp32": rows(n, 0), "v": rows(n, wrong)}, {"A": spec}, reference="fp32",
                                     resamples=400)
        return guard.decision(verdicts["v"]), verdicts["v"]
    assert decide(200, 1)[0] == guard.KEEPS
    outcome, text = decide(12, 1)
    assert outcome == guard.UNDECIDED and "evaluate more samples" in text
    assert decide(12, 6)[0] == guard.LOSES
    # Too few samples decide nothing, however the interval falls (one sample: zero width).
    for n in (1, 4):
        outcome, text = decide(n, 0)
        assert outcome == guard.UNDECIDED and f"only {n} samples on A" in text, text
    # A random-weight model's answers decide nothing: chance is not a finding.
    _, verdicts = guard.evaluate({"fp32": rows(200, 0), "v": rows(200, 1), "w": rows(200, 100)}, {"A": spec},
                                 reference="fp32", resamples=400, errors={"x": "it crashed"})
    judged = guard.not_judged({**verdicts, "x": "incomplete: it crashed"}, "random weights")
    assert judged["v"] == judged["w"] == "not judged: random weights" and guard.decision(judged["v"]) is None
    assert guard.decision(judged["fp32"]) == guard.REFERENCE and judged["x"].startswith("incomplete")


@pytest.mark.parametrize("task", ["MedWB-QIC", "MedWB-STS", "MedWB-NER"])
def test_the_bootstrap_scores_every_resample_as_the_official_metric(task):
    """All resamples are scored at once from per-sample counts; each must equal the official
    metric on that resample (sklearn's classification_report for the label tasks: labels
    only predicted, only gold, the empty default label, resamples that miss a label;
    pooled micro-F1 with its no-true-positive rule for IE)."""
    from medwb.eval.guard import _bootstrap
    spec = scoring.task_spec(task)
    rng = np.random.default_rng(1)
    if task == "MedWB-NER":
        stats = [tuple(int(v) for v in rng.integers(0, 3, 3)) for _ in range(30)]
    else:
        labels = ["妇科", "骨科", "内科", "儿科", ""]
        stats = [(labels[g], labels[p]) for g, p in zip(rng.integers(0, 4, 30), rng.integers(0, 5, 30))]
    draws = rng.integers(0, len(stats), size=(200, len(stats)))
    fast = _bootstrap(spec, stats, draws)
    slow = [scoring.aggregate(spec, [stats[i] for i in idx])["score"] for idx in draws]
    assert fast == pytest.approx(slow, abs=1e-12)
    assert len(set(np.round(fast, 9))) > 20  # the resamples really differ

@pytest.mark.parametrize("content, expected", [
    ("{not json\n", "bad.jsonl:1: not JSON"),
    ('{"input": "x"}\n', "missing field"),
    ("", "no records"),
])
def test_bad_files_get_one_line_and_exit_status_2(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    proc = _cli("--eval-file", str(path), "--variants", "pytorch:fp32")
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_unknown_task_names_the_mapping_and_a_mapped_one_loads(tmp_path):
    rec = json.loads(evalset.EVAL_FILE.read_text(encoding="utf-8").splitlines()[0])
    rec["task_dataset"] = "HospitalNER"
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    proc = _cli("--eval-file", str(path), "--variants", "pytorch:fp32")
    assert proc.returncode == 2 and "HospitalNER" in proc.stderr and "--task-map" in proc.stderr
    cfg = evaluation.check_config({**evaluation.DEFAULTS, "eval_file": str(path),
                                   "task_map": "HospitalNER=CMeEE-V2"}, need_model=False)
    assert cfg["data"].tasks() == ["HospitalNER"]


@pytest.mark.parametrize("args, expected", [
    (["--variants", "pytorch:int3"], "precision"),
    (["--limit", "-1"], "limit"),
    (["--task-map", "oops"], "task_map"),
])
def test_bad_parameters_are_refused_before_anything_runs(args, expected, tmp_path):
    proc = _cli(*args, "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and expected in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_notebook_evaluates_fp32_and_a_low_bit_variant_of_each_route(tmp_path, demo_model_dir):
    pm.execute_notebook(str(NB), str(tmp_path / NB.name), kernel_name="medwb-main", cwd=str(tmp_path),
                        progress_bar=False, parameters={
                            "run_dir": str(tmp_path), "limit": 2,
                            "variants": "pytorch:fp32,bigdl:sym_int4,openvino-genai:int8/bf16"})
    out = tmp_path / "eval"
    scores = (out / "scores.csv").read_text(encoding="utf-8")
    for variant in ("pytorch:fp32", "bigdl:sym_int4", "openvino-genai:int8/bf16"):
        assert (out / "samples" / (variant.replace(":", "_").replace("/", "_") + ".jsonl")).exists()
        for task in evalset.TASKS:
            assert f"{variant},{task}," in scores
    assert (out / "scores.png").stat().st_size > 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "reference (FP32)" in html


def test_recommendation_gates_on_the_accuracy_guard_then_picks_the_fastest(monkeypatch):
    import pandas as pd
    from medwb.bench import report as bench_report
    rows = pd.DataFrame({"variant": ["pytorch:fp32", "bigdl:sym_int4", "openvino-genai:int8/bf16"],
                         "tokens": "512->128", "error": "", "tpot_ms": [20.0, 5.0, 8.0], "floor_ms": [1.0, 0.3, 0.5],
                         "ttft_ms": [50.0, 20.0, 25.0], "peak_rss_MB": [900.0, 300.0, 400.0],
                         "rougeL_vs_fp32": [1.0, 0.95, 0.97], "dx_top3": 1.0, "dc_complete": 1.0, "kernels": ""})
    monkeypatch.setattr(bench_report, "frame", lambda records: rows)
    summary = {"run": "runs/x", "created": "now", "variants": {
        "pytorch:fp32": {"overall": 60.0, "keeps_accuracy": True},
        "bigdl:sym_int4": {"overall": 50.0, "keeps_accuracy": False},
        "openvino-genai:int8/bf16": {"overall": 59.5, "keeps_accuracy": True}}}
    ranked = bench_report.recommend([], latency_target_ms=100, ram_budget_gb=16, evaluation=summary)
    # int4 is fastest but loses accuracy on some task: int8 is recommended, not FP32.
    assert list(ranked.variant) == ["openvino-genai:int8/bf16", "pytorch:fp32", "bigdl:sym_int4"]
    text = bench_report.recommendation_text(ranked, 100, 16, evaluation=summary)
    assert "deploy openvino-genai:int8/bf16" in text and "task score 59.5" in text
    # Without an evaluation: the proxy, said so; still fastest-first among those that pass it.
    ranked = bench_report.recommend([], latency_target_ms=100, ram_budget_gb=16)
    assert ranked.variant.iloc[0] == "bigdl:sym_int4" and ranked.quality_basis.iloc[0].startswith("ROUGE-L")
    assert "no task evaluation" in bench_report.recommendation_text(ranked, 100, 16)


def test_a_limited_run_samples_every_task_without_aliasing_its_order():
    data = evaluation.dataset.load(evalset.EVAL_FILE)
    for limit in (2, 4, 6, 12, 24):
        picked = evaluation.select(data, limit)
        assert picked == evaluation.select(data, limit)  # the same samples every run
        by_task = {}
        for s in picked:
            by_task.setdefault(s.task_dataset, []).append(s)
        assert all(len(v) == limit for v in by_task.values()) and set(by_task) == set(evalset.TASKS)
        if limit >= 6:  # the yes/no task alternates its labels: an evenly spaced cut saw one
            assert {s.target for s in by_task["MedWB-STS"]} == {"是的", "不是"}


def test_rescore_of_perfect_answers_is_100_with_an_interval_that_holds_it(tmp_path):
    """Every answer is the gold target: the rescored overall is 100 for both variants, every
    interval holds its score (the report's plot used to refuse it), and the copy, on 4 samples per
    task, is not judged to keep FP32's accuracy: too few samples."""
    cfg = evaluation.check_config({**evaluation.DEFAULTS, "variants": "pytorch:fp32,bigdl:sym_int4",
                                   "limit": 4, "bootstrap": 200}, need_model=False)
    samples = evaluation.select(cfg["data"], cfg["limit"])
    asks = [{"key": f"k{i}"} for i in range(len(samples))]
    perfect = [{"output": s.target} for s in samples]
    out = tmp_path / "run" / "eval"
    first = evaluation.score_run(samples, asks, {t: scoring.task_spec(t) for t in cfg["data"].tasks()},
                                 {"pytorch:fp32": perfect, "bigdl:sym_int4": perfect}, {}, cfg, out)
    (out / "run.json").write_text(json.dumps({"config": evaluation.public(cfg), "errors": {}}), encoding="utf-8")
    proc = _cli("--rescore", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = evaluation.rescore(tmp_path / "run", log=lambda *_: None)
    for result in (first, again):
        scores = result["scores"]
        overall = scores[scores.task == "overall"]
        assert list(overall.score) == [pytest.approx(100.0, abs=1e-4)] * 2
        assert ((scores.ci_low <= scores.score) & (scores.score <= scores.ci_high)).all()
        # the same answers as FP32's, but 4 samples per task: too few to decide (guard.MIN_SAMPLES)
        assert result["summary"]["variants"]["bigdl:sym_int4"]["decision"] == "undecided"
    assert (out / "scores.png").stat().st_size > 0
    # The same answers under the CCKS 2023 rules: beside the run's own scores, which stay.
    proc = _cli("--rescore", str(tmp_path / "run"), "--rules", "ccks2023")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ccks = json.loads((out / "rules-ccks2023" / "summary.json").read_text(encoding="utf-8"))
    assert ccks["rules"] == "ccks2023" and ccks["variants"]["bigdl:sym_int4"]["overall"] == pytest.approx(100.0)
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["rules"] == "official"
