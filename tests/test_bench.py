"""medwb bench: bad config rejected up front, a crashing variant recorded, notebook 03 end to end."""
import json
import shutil
import subprocess
import sys

import papermill as pm
import pytest

from medwb import runner
from medwb.backends.variants import parse_variants
from medwb.bench import config, roofline
from medwb.errors import MedwbError
from medwb.jsonl import read as read_records


pytestmark = pytest.mark.slow  # loads or converts models, runs notebooks or servers

def _bench_cli(*args, timeout=1200):
    return subprocess.run([sys.executable, "-m", "medwb", "bench", "--no-progress", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_bad_config_is_rejected_before_anything_runs(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("token_pairs: [[32, 64], [2000, 128]]\n"
                   "variants:\n"
                   "  - {backend: pytorch, precision: fp32}\n"
                   "  - {backend: tensorrt, precision: fp16}\n"
                   "  - {backend: openvino-genai, weights: int4, precision: f16}\n"
                   "  - {backend: bigdl, precision: nf4}\n")
    out = tmp_path / "run"
    proc = _bench_cli("--config", str(cfg), "--run-dir", str(out))
    assert proc.returncode == 2
    assert "token_pairs[1] [2000, 128]: 2128 tokens exceed the model's context of 2048" in proc.stderr
    assert "variants[1] (tensorrt:fp16): backend 'tensorrt' is unknown" in proc.stderr
    assert "variants[2] (openvino-genai:int4/f16): precision 'f16' is not supported by openvino-genai" in proc.stderr
    assert "variants[3] (bigdl:nf4): 'nf4' raises 'not supported on CPU'" in proc.stderr
    assert not out.exists()
    with pytest.raises(MedwbError, match="unknown setting"):
        config.load_config(None, tokens=[1, 2])
    assert parse_variants("pytorch:fp32,openvino-genai:int4/bf16") == [
        {"backend": "pytorch", "precision": "fp32"},
        {"backend": "openvino-genai", "precision": "bf16", "weights": "int4"}]


def test_knobs_are_checked_against_their_backend_before_anything_runs(tmp_path, demo_model_dir):
    from medwb.backends.variants import label, variant_problems
    parsed = parse_variants("openvino-genai:int4/bf16[int4_sym=true int4_group_size=-1],bigdl:sym_int4[threads=1]")
    assert parsed == [{"backend": "openvino-genai", "weights": "int4", "precision": "bf16", "int4_sym": True,
                       "int4_group_size": -1}, {"backend": "bigdl", "precision": "sym_int4", "threads": 1}]
    assert [label(v) for v in parsed] == ["openvino-genai:int4/bf16[int4_group_size=-1 int4_sym=true]",
                                          "bigdl:sym_int4[threads=1]"]
    assert parse_variants(",".join(label(v) for v in parsed)) == parsed  # a label reads back as its variant

    def problems(**v):
        return "; ".join(variant_problems(v, "variants[0]", demo_model_dir))
    assert problems(backend="openvino-genai", weights="int4", precision="bf16", int4_sym=True, threads=2) == ""
    assert "int4_sym applies only to weights int4" in problems(backend="openvino-genai", weights="int8",
                                                               precision="bf16", int4_sym=True)
    # 128 does not divide the demo model's Linear inputs (64, 192): refused with the sizes that do
    assert "int4_group_size 128 does not divide" in problems(backend="openvino-genai", weights="int4",
                                                             precision="bf16", int4_group_size=128)
    assert "int4_ratio 0.5: use one of 1.0, 0.9, 0.8" in problems(backend="openvino-genai", weights="int4",
                                                                   precision="bf16", int4_ratio=0.5)
    assert "bigdl_init does not apply to llama.cpp" in problems(backend="llama.cpp", precision="q4_0",
                                                                 bigdl_init="iomp")
    assert "unknown key pin" in problems(backend="bigdl", precision="sym_int4", pin=True)
    assert "threads 0: must be a positive integer" in problems(backend="pytorch", precision="fp32", threads=0)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("variants:\n  - {backend: openvino-genai, weights: int4, precision: bf16, kv_cache_precision: i8}\n")
    proc = _bench_cli("--config", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 2 and "kv_cache_precision 'i8': use one of f32, bf16, f16, u8" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_tuning_run_measures_each_knob_against_its_default_in_the_same_run(tmp_path):
    """Export knobs make an IR of their own (never the default's), load knobs reach the
    compiled model, process knobs the probe's environment; rounds repeat the matrix and
    the effects pool every trial of every round."""
    from medwb.bench import tuning
    cfg = tmp_path / "tune.yaml"
    cfg.write_text("token_pairs: [[16, 8]]\ntrials: 2\nrounds: 2\nquality_cases: 0\ncompute_floor: false\n"
                   "variants:\n"
                   "  - {backend: openvino-optimum, weights: int4, precision: f32}\n"
                   "  - {backend: openvino-optimum, weights: int4, precision: f32, int4_sym: false, int4_group_size: 32,"
                   " kv_cache_precision: u8, dynamic_quantization_group_size: 0}\n")
    proc = _bench_cli("--config", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "knobs against their defaults (this run):" in proc.stdout
    records = read_records(tmp_path / "run" / "records" / "bench.jsonl")
    assert sorted(r["round"] for r in records if r["record_type"] == "variant") == [0] * 2 + [1] * 2
    assert not [r["error"] for r in records if r.get("error")]
    recs = {r["variant"]: r for r in records if r["record_type"] == "variant" and r["round"] == 0}
    default, tuned = recs["openvino-optimum:int4/f32"], recs[
        "openvino-optimum:int4/f32[dynamic_quantization_group_size=0 int4_group_size=32 int4_sym=false kv_cache_precision=u8]"]
    assert default["export_settings"]["int4_group_size"] == 64 and default["export_settings"]["int4_sym"]  # the defaults
    assert tuned["export_settings"]["int4_group_size"] == 32 and not tuned["export_settings"]["int4_sym"]
    assert tuned["size_bytes"] != default["size_bytes"]  # another IR, not the default's reused
    assert "uint8" in tuned["compiled_properties"]["KV_CACHE_PRECISION"]
    assert tuned["compiled_properties"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "0"
    assert tuned["kv_bytes_per_element"] == 1  # the floor counts the cache as the compiled model keeps it
    assert not default["process_env"]["LD_PRELOAD"]
    effects = tuning.knob_effects(records)
    assert list(effects["base_variant"]) == ["openvino-optimum:int4/f32"]
    assert list(effects["trials"]) == [4] and 0 < effects["p_value"][0] <= 1  # 2 trials x 2 rounds, pooled
    table = tuning.verdicts(effects)
    assert table["verdict"][0] in {"faster", "slower", "cannot tell"}
    assert "int4_sym=false" in tuning.verdict_text(table)


def test_bigdl_init_knob_sets_the_probe_process_environment(demo_model_dir):
    """bigdl-llm-init's preloads must be in place before the process starts (LD_PRELOAD):
    the probe reports the environment it really ran in."""
    from medwb import envs
    from medwb.backends import registry
    from medwb.bench.probe import run_probe
    entry = registry.get("bigdl")
    spec = {"backend": "bigdl", "model_path": str(demo_model_dir), "precision": "sym_int4", "threads": 1,
            "bigdl_init": "iomp"}
    result = run_probe(spec, python=str(envs.python_of(entry.env)), env=entry.process_env(spec))
    assert "error" not in result, result
    assert result["process_env"]["LD_PRELOAD"].endswith("libiomp5.so")
    assert result["process_env"]["OMP_NUM_THREADS"] == "1"
    assert entry.process_env({**spec, "bigdl_init": "off"}) == {} == entry.process_env({k: v for k, v in spec.items()
                                                                                        if k != "bigdl_init"})


def test_a_crashing_variant_becomes_a_record_and_the_run_goes_on(tmp_path, demo_model_dir):
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    (model / "pytorch_model.bin").write_bytes(b"not a checkpoint")  # only llm-convert reads it
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"model": str(model), "token_pairs": [[16, 8]], "trials": 1, "quality_cases": 1,
                               "compute_floor": False,
                               "artifacts_dir": str(tmp_path / "artifacts"),
                               "variants": [{"backend": "pytorch", "precision": "fp32"},
                                            {"backend": "bigdl-cli", "precision": "int4"},
                                            {"backend": "pytorch", "precision": "bf16"}]}))
    proc = _bench_cli("--config", str(cfg), "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = {r["variant"]: r for r in read_records(tmp_path / "run" / "records" / "bench.jsonl")
            if r["record_type"] == "variant"}
    assert "llm-convert failed" in recs["bigdl-cli:int4"]["error"]
    ok = recs["pytorch:bf16"]  # no conversion: the copied model needs no IR of its own here
    assert not ok.get("error") and ok["tpot_ms"] > 0 and ok["pct_of_limit"] > 0
    assert ok["agreement_vs_fp32"]["n_prompts"] == 2 and "rouge_l_vs_fp32" in ok["quality"]
    assert (tmp_path / "run" / "records" / "bench.csv").read_text().startswith("record_type,")


NB = runner.NOTEBOOKS_DIR / "03_compare.ipynb"


def test_the_default_matrix_has_every_route_at_4_and_8_bits_beside_the_peer():
    from medwb.backends import registry, variants
    labels = [variants.label(v) for v in config.DEFAULT_CONFIG["variants"]]
    routes = {registry.get(v["backend"]).route for v in config.DEFAULT_CONFIG["variants"]}
    assert {"bigdl-api", "bigdl-cli", "openvino-optimum", "openvino-genai"} <= routes and "pytorch:fp32" in labels
    assert {"llama.cpp:q4_0", "llama.cpp:q8_0"} <= set(labels)
    assert {"bigdl:sym_int4", "bigdl:sym_int8", "openvino-genai:int4/bf16", "openvino-genai:int8/bf16"} <= set(labels)


# One variant per route and the peer: `make run` measures the whole default matrix (above)
# with the notebook's defaults; here the notebook runs headless on the same code path.
NOTEBOOK_VARIANTS = ["pytorch:fp32", "bigdl:sym_int4", "bigdl-cli:int4", "openvino-optimum:int8/bf16",
                     "openvino-genai:int4/bf16", "llama.cpp:q4_0"]


def test_compare_notebook_benchmarks_every_route_and_the_peer_and_writes_the_report(tmp_path, demo_model_dir):
    pm.execute_notebook(str(NB), str(tmp_path / NB.name), kernel_name="medwb-main", cwd=str(tmp_path),
                        progress_bar=False,
                        parameters={"run_dir": str(tmp_path), "token_pairs": [[32, 8]], "trials": 1,
                                    "quality_cases": 1, "concurrent": 1, "variants": NOTEBOOK_VARIANTS})
    recs = [r for r in read_records(tmp_path / "records" / "bench.jsonl") if r["record_type"] == "variant"]
    good = [r for r in recs if not r.get("error")]
    assert [r["variant"] for r in recs] == NOTEBOOK_VARIANTS
    # every route measured; llama.cpp may be an error record on a machine that could not build it
    assert {r["variant"] for r in good} >= set(NOTEBOOK_VARIANTS) - {"llama.cpp:q4_0"}, \
        [(r["variant"], r.get("error")) for r in recs]
    assert {r["backend"] for r in good} >= {"pytorch", "bigdl", "openvino"}
    assert {r["route"] for r in good} >= {"bigdl-api", "bigdl-cli", "openvino-optimum", "openvino-genai"}
    for r in good:
        assert r["ttft_ms"] > 0 and r["tpot_ms"] > 0 and r["peak_rss_mb"] > 0 and r["size_bytes"] > 0
        assert r["decode_floor_ms"] > 0 and r["pct_of_limit"] > 0 and len(r["output_md5"]) == 32
        assert r["kernels"] and r["cpu"]["model"] and r["threads"] >= 1
        assert "machine_load" in r  # every measured variant says what load it was timed under
        assert {"diagnosis_top3_rate", "discharge_complete_rate", "rouge_l_vs_fp32"} <= set(r["quality"])
        # The roofline's second ceiling: each runtime whose kernel can be called alone has its
        # compute floor (medwb.bench.roofline), and the record says which floor binds.
        if r["variant"].split(":")[0] in ("pytorch", "llama.cpp", "openvino-optimum", "openvino-genai"):
            assert r["compute_floor_ms"] > 0 and r["kernel_fit"], (r["variant"], r.get("compute_floor_error"))
            assert r["binding_floor"] in ("bandwidth", "compute")
            bound = roofline.bounds(r["compute_floor_ms"], r["tpot_ms"])
            assert r["limit_ms"] == (max(r["compute_floor_ms"], r["decode_floor_ms"]) if bound else r["decode_floor_ms"])
    assert "bound nothing" in next(r for r in good if r["variant"] == "bigdl:sym_int4")["compute_floor_error"]
    # The peer users would pick instead is in the default matrix, at the routes' INT4 and INT8.
    peer = {r["variant"]: r for r in recs if r.get("peer")}
    assert set(peer) == {"llama.cpp:q4_0"}
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Recommendation" in html and html.count("data:image/png;base64,") >= 4
    assert "Against what users would pick instead" in html
    if not any(r.get("error") for r in peer.values()):
        assert "Against llama.cpp at the same bits (32-8 tokens, this run): 4-bit:" in html
    assert "http://" not in html and "https://" not in html  # self-contained
    # Fidelity to FP32 of every route that gives logits (genai through optimum on its IR), and
    # llm-cli recorded as not measurable with the reason; the evidence named per variant.
    fid = json.loads((tmp_path / "fidelity" / "summary.json").read_text(encoding="utf-8"))["variants"]
    assert fid["openvino-genai:int4/bf16"]["measured_with"] == "openvino-optimum"
    assert fid["bigdl-cli:int4"]["verdict"] is None and "not measurable" in fid["bigdl-cli:int4"]["why"]
    assert fid["bigdl:sym_int4"]["tokens"] == 1024 and fid["bigdl:sym_int4"]["kld_mean"] > 0
    assert "speed fidelity memory" in html and "evidence" in html
    executed = json.loads((tmp_path / NB.name).read_text(encoding="utf-8"))
    images = [o for c in executed["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4


def test_side_by_side_copies_are_measured_and_the_recommendation_uses_them(tmp_path):
    from medwb.bench import report
    proc = _bench_cli("--variants", "pytorch:fp32,openvino-genai:int8/f32", "--concurrent", "3", "--token-pairs",
                      "16-8", "--trials", "1", "--quality-cases", "0", "--run-dir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = read_records(tmp_path / "run" / "records" / "bench.jsonl")
    for r in (r for r in records if r["record_type"] == "variant"):
        side = r["concurrent"]
        assert side["n"] == 3 and side["threads_each"] >= 1 and len(side["tpot_ms_each"]) == 3, side
        assert all(t > 0 for t in side["tpot_ms_each"]) and side["tpot_ms_max"] == max(side["tpot_ms_each"])
        assert side["aggregate_tok_s"] > 0 and all(m > 0 for m in side["peak_rss_mb_each"])
    accurate = {"run": "runs/x", "created": "now",  # as if both kept FP32's task scores
                "variants": {v: {"overall": 50.0, "keeps_accuracy": True}
                             for v in ("pytorch:fp32", "openvino-genai:int8/f32")}}
    ranked = report.recommend(records, latency_target_ms=1000, ram_budget_gb=16, side_by_side=3, evaluation=accurate)
    assert set(ranked["side_by_side_basis"]) == {"measured"}
    assert "measured:" in report.recommendation_text(ranked, 1000, 16, side_by_side=3, evaluation=accurate)
    ranked2 = report.recommend(records, latency_target_ms=1000, ram_budget_gb=16, side_by_side=2, evaluation=accurate)
    assert set(ranked2["side_by_side_basis"]) == {"estimated"}  # 3 copies measured, 2 asked: not the same case
    assert "--concurrent 2" in report.recommendation_text(ranked2, 1000, 16, side_by_side=2, evaluation=accurate)
    bad = _bench_cli("--concurrent", "0", "--run-dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "concurrent must be a positive integer, got 0" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_overhead_measures_the_worker_path_against_direct_calls(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medwb", "overhead", "--variants", "pytorch:fp32", "--cases", "2",
                           "--max-new-tokens", "16", "--run-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [rec] = read_records(tmp_path / "records" / "overhead.jsonl")
    assert rec["model"] == "pytorch:fp32" and rec["records"] == 2 and rec["new_tokens"] > 0
    assert rec["same_text"] == [True, True]  # the same greedy answers on both paths
    assert rec["direct_ms"] > 0 and rec["worker_ms"] > 0 and isinstance(rec["overhead_pct"], float)
    assert "machine_load" in rec and rec["cpu"]
    bad = subprocess.run([sys.executable, "-m", "medwb", "overhead", "--cases", "0", "--run-dir",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--cases and --max-new-tokens must be positive" in bad.stderr
    assert not (tmp_path / "bad").exists()
