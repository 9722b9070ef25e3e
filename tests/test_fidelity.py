"""#32 fidelity to FP32 and the deployment decision: the per-token figures, the thresholds
from configs/decision.yaml, the recommendation that changes when fidelity fails, the
evaluation a recommendation may reuse, and `medwb fidelity` on the demo model."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medwb import jsonl, runner
from medwb.errors import MedwbError
from medwb.eval import fidelity

REPO = Path(__file__).resolve().parents[1]


def test_a_distribution_against_itself_has_zero_kld_and_the_same_top_everywhere():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 64)) * 3
    targets = rng.integers(0, 64, size=300)
    rows = fidelity.compare(fidelity.log_softmax(logits), logits, targets)
    s = fidelity.summarize(rows)
    assert s["kld_mean"] == pytest.approx(0, abs=1e-12) and s["same_top"] == 1.0 and s["rms_dp"] < 1e-12
    assert s["ppl_ratio"] == pytest.approx(1.0) and s["ppl_ratio_ci"][0] <= 1.0 <= s["ppl_ratio_ci"][1]
    # a perturbed copy: positive KLD, some tops changed, the interval around the rate
    noisy = fidelity.summarize(fidelity.compare(fidelity.log_softmax(logits), logits + rng.normal(size=logits.shape),
                                                targets))
    assert noisy["kld_mean"] > 0 and noisy["same_top"] < 1
    assert noisy["same_top_ci"][0] < noisy["same_top"] < noisy["same_top_ci"][1]
    assert fidelity.summarize(rows[:99])["error"].startswith("only 99 tokens")
    with pytest.raises(MedwbError, match="vocabulary differs"):
        fidelity.compare(fidelity.log_softmax(logits), logits[:, :60], targets)


def test_generation_level_similarity_names_where_greedy_output_first_leaves_fp32():
    """Every variant, the ones without logits too: exact match, the first divergent token and
    the share reproduced before it, on the same prompts."""
    from medwb.quality.agreement import agreement, first_divergence
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 9, 3], [1, 2, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2  # stopped early: leaves at the missing token
    ref = {"output_ids": [[1, 2, 3, 4], [5, 6, 7, 8], [1, 1, 1, 1]]}
    a = agreement({"output_ids": [[1, 2, 3, 4], [5, 6, 0, 8], [2, 1, 1, 1]]}, ref)
    assert a["exact_match_rate"] == round(1 / 3, 4) and a["first_divergence"] == [None, 2, 0]
    assert a["first_divergence_median"] == 0 and a["prefix_agreement"] == round((1 + 0.5 + 0) / 3, 4)
    assert agreement(ref, ref)["first_divergence_median"] is None


def test_thresholds_follow_the_bits_and_the_verdict_needs_its_interval_inside_the_bar(tmp_path):
    decision = fidelity.load_decision()
    assert decision["margin"] == 0.05
    assert fidelity.thresholds(decision, 4)["max_kld"] > fidelity.thresholds(decision, 8)["max_kld"]
    bar = {"max_kld": 0.05, "min_same_top": 0.9}
    base = {"tokens": 1000, "kld_mean": 0.02, "kld_upper": 0.03, "same_top": 0.95, "same_top_ci": [0.93, 0.96]}
    assert fidelity.verdict(base, bar)[0] == "passes"
    assert fidelity.verdict({**base, "kld_mean": 0.06, "kld_upper": 0.07}, bar)[0] == "fails"
    outcome, why = fidelity.verdict({**base, "kld_upper": 0.06}, bar)  # mean inside, interval not
    assert outcome is None and "score more tokens" in why
    # A summary read again (notebook 03 on a run folder that has one) is judged by the bar given now.
    summary = {"variants": {"v": {**base, "bits": 4, "verdict": "passes"}, "r": {"verdict": "reference"}}}
    strict = tmp_path / "strict.yaml"
    strict.write_text("margin: 0.05\nfidelity:\n  4: {max_kld: 0.01, min_same_top: 0.99}\n", encoding="utf-8")
    again = fidelity.rejudge(summary, fidelity.load_decision(strict))
    assert again["variants"]["v"]["verdict"] == "fails" and again["variants"]["r"]["verdict"] == "reference"
    assert summary["variants"]["v"]["verdict"] == "passes"  # the stored summary is left as it was
    bad = tmp_path / "d.yaml"
    bad.write_text("margin: 5\n", encoding="utf-8")
    with pytest.raises(MedwbError, match="margin must be a share"):
        fidelity.load_decision(bad)


def _ranked(monkeypatch, fid_summary):
    import pandas as pd

    from medwb.bench import report
    rows = pd.DataFrame({"variant": ["pytorch:fp32", "openvino-genai:int8/bf16", "llama.cpp:q4_0"],
                         "tokens": "32->64", "error": "", "tpot_ms": [20.0, 8.0, 5.0], "floor_ms": 0.5,
                         "ttft_ms": 30.0, "peak_rss_MB": [900.0, 400.0, 300.0], "rougeL_vs_fp32": 0.95,
                         "dx_top3": 1.0, "dc_complete": 1.0, "kernels": ""})
    monkeypatch.setattr(report, "frame", lambda records: rows)
    evaluation = {"run": "runs/x", "created": "now", "variants": {
        "pytorch:fp32": {"overall": 60.0, "decision": "reference"},
        "openvino-genai:int8/bf16": {"overall": 59.0, "decision": "undecided"},
        "llama.cpp:q4_0": {"overall": 58.0, "decision": "undecided"}}}
    ranked = report.recommend([], 100, 16, evaluation=evaluation, fidelity=fid_summary)
    return ranked, report.recommendation_text(ranked, 100, 16, evaluation=evaluation, fidelity=fid_summary)


def _fidelity_summary(decision):
    figures = {"llama.cpp:q4_0": (4, 0.036, 0.043, 0.967, [0.954, 0.977]),
               "openvino-genai:int8/bf16": (8, 0.0007, 0.0009, 0.991, [0.983, 0.996])}
    out = {"windows": 4, "scored_per_window": 256, "texts": "test texts", "variants": {}}
    for name, (bits, kld, upper, top, ci) in figures.items():
        s = {"tokens": 1024, "kld_mean": kld, "kld_upper": upper, "same_top": top, "same_top_ci": ci}
        outcome, why = fidelity.verdict(s, fidelity.thresholds(decision, bits))
        out["variants"][name] = {**s, "bits": bits, "verdict": outcome, "why": why}
    return out


def test_the_recommendation_changes_when_a_variants_fidelity_is_made_to_fail(tmp_path, monkeypatch):
    # Task scores undecided for both low-bit variants (a dozen samples); fidelity decides.
    ranked, text = _ranked(monkeypatch, _fidelity_summary(fidelity.load_decision()))
    assert ranked.variant.iloc[0] == "llama.cpp:q4_0" and "deploy llama.cpp:q4_0" in text
    assert "fidelity within the bar" in ranked.evidence.iloc[0] and "not enough samples" in ranked.evidence.iloc[0]
    # A stricter 4-bit bar in a config file: q4_0 now fails it, int8 is recommended, and the
    # text says why the faster one was passed over.
    strict = tmp_path / "decision.yaml"
    strict.write_text("margin: 0.05\nfidelity:\n  4: {max_kld: 0.01, min_same_top: 0.99}\n"
                      "  8: {max_kld: 0.01, min_same_top: 0.95}\n  32: {max_kld: 0.001, min_same_top: 0.99}\n",
                      encoding="utf-8")
    ranked, text = _ranked(monkeypatch, _fidelity_summary(fidelity.load_decision(strict)))
    assert ranked.variant.iloc[0] == "openvino-genai:int8/bf16" and "deploy openvino-genai:int8/bf16" in text
    assert "Faster but not chosen: llama.cpp:q4_0 (5.00 ms/token): task scores: not enough samples to decide; " \
           "fidelity fails the bar" in text
    # Neither evidence says keeps: FP32, and the text says why each faster variant was not chosen.
    ranked, text = _ranked(monkeypatch, None)
    assert ranked.variant.iloc[0] == "pytorch:fp32" and "not enough evidence" in text


def test_an_evaluation_in_a_temporary_folder_is_never_the_latest(tmp_path, monkeypatch):
    """The answer cache's latest.json is written only for runs in runs/, and read only when it
    is of this model and this evaluation set, from a runs/ folder that still holds it."""
    from medwb.eval import run as evaluation
    monkeypatch.setenv("MEDWB_RUNS", str(tmp_path / "runs"))
    cache = tmp_path / "answers"
    params = dict(variants="pytorch:fp32", limit=1, threads=1, bootstrap=100, answers_cache=str(cache),
                  max_new_tokens={"MedWB-MRG": 8, "MedWB-DSR": 8, "MedWB-DDx": 8}, log=lambda *_: None,
                  progress=False)
    evaluation.run(run_dir=tmp_path / "scratch", **params)  # a test's own folder
    assert evaluation.latest_summary("demo", answers_cache=str(cache)) is None
    real = runner.new_run_dir()
    evaluation.run(run_dir=real, **params)  # the answers are cached: no model loaded again
    found = evaluation.latest_summary("demo", answers_cache=str(cache))
    assert found["run"] == str(real) and "an earlier evaluation of this model" in found["source"]
    own = evaluation.latest_summary("demo", answers_cache=str(cache), run_dir=str(real))
    assert own["source"] == f"this run ({real})"
    assert found["variants"]["pytorch:fp32"]["decision"] == "reference"


def test_the_main_job_evaluates_before_it_compares():
    names = [p.name for p in runner.discover()]
    assert names.index("06_evaluate.ipynb") < names.index("03_compare.ipynb")


@pytest.mark.slow
def test_fidelity_of_the_demo_models_variants_int8_closer_than_int4(tmp_path, demo_model_dir):
    """`medwb fidelity` on the demo model: FP32 against itself in its child process gives
    KLD 0 and the same top everywhere; at 8 bits every route is closer to FP32 than at 4."""
    variants = ("openvino-optimum:int8/bf16,openvino-optimum:int4/bf16,bigdl:sym_int8,bigdl:sym_int4,"
                "llama.cpp:q8_0,llama.cpp:q4_0")
    proc = subprocess.run([sys.executable, "-m", "medwb", "fidelity", "--variants", variants, "--windows", "1",
                           "--run-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "fidelity" / "summary.json").read_text(encoding="utf-8"))["variants"]
    records = {r["variant"]: r for r in jsonl.read(tmp_path / "records" / "fidelity.jsonl")}
    assert set(records) == set(variants.split(","))
    for route in ("openvino-optimum:int{}/bf16", "bigdl:sym_int{}", "llama.cpp:q{}_0"):
        eight, four = summary[route.format(8)], summary[route.format(4)]
        assert 0 < eight["kld_mean"] < four["kld_mean"], (route, eight, four)
        assert eight["tokens"] == four["tokens"] == 256
    # The reference against itself, through the same child code path a variant takes.
    from medwb.backends.variants import prepare
    from medwb.sysinfo import default_threads  # the worker's share under make test
    wins = [list(range(1, 9)) * 16]  # one window of 128 ids
    ref = tmp_path / "ref.npy"
    art = prepare(demo_model_dir, [{"backend": "pytorch", "precision": "fp32"}], {"threads": default_threads()})["pytorch:fp32"]
    spec = {"backend": "pytorch", "precision": "fp32", "model_path": str(art["path"]), "threads": default_threads(),
            "windows": wins, "check_text": "初步诊断", "reference": str(ref), "out": str(tmp_path / "self.jsonl")}
    from medwb.backends.pytorch import load_tokenizer
    spec["check_ids"] = list(load_tokenizer(demo_model_dir)("初步诊断")["input_ids"])
    fidelity._run_child("reference", {**spec, "out": str(ref)}, "main", {}, 600)
    fidelity._run_child("variant", spec, "main", {}, 600)
    rows = jsonl.read(tmp_path / "self.jsonl")
    assert len(rows) == 64 and all(r["kld"] < 1e-6 and r["same_top"] for r in rows)
