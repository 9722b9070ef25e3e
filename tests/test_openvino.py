"""OpenVINO route foundations (main env): export, stateful IR, both runtimes, bad input."""
import json
import re
import shutil

import papermill as pm
import pytest

from medwb import runner
from medwb.tasks import corpus, prompts
from medwb.backends.toolchain import openvino_export as oe
from medwb import jsonl
from medwb.backends.openvino import OptimumOVBackend
from medwb.backends.openvino_genai import GenAIBackend
from medwb.backends.pytorch import PyTorchBackend
from medwb.errors import MedwbError

# INT4 is signed when medwb's default is symmetric (medwb.backends.openvino's tuned knobs).
# `make test` runs two pytest-xdist workers; this module's tests stay on one of them:
# its module fixtures export three IRs once, for this worker only.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("openvino")]  # slow: loads or converts models, runs notebooks or servers

EXPECTED_WEIGHTS = {"fp16": "f16", "int8": "u8", "int4": "i4" if oe.INT4_DEFAULTS["int4_sym"] else "u4"}
# Stated rate: int8 weights at f32 precision vs FP32 PyTorch, 8 prompts x 32 tokens, exactly
# equal. Measured 7/8 and 8/8 on the stage-1 demo model, 5/8 on the shipped stage-2 model
# (2026-11-25, Intel Xeon): the three that differ are discharge drafts where one copied value
# flips ("2天" -> "2小时") and the rest follows. Task accuracy is kept (the evaluation's guard:
# openvino-optimum int8 keeps >= 95% of FP32 on every task), so this floor checks that the
# export works (a broken int8 path agrees on ~0 prompts), not that int8 is lossless.
INT8_MIN_EXACT = 0.5


@pytest.fixture(scope="module")
def irs(demo_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ir")
    return {wf: (root / wf, oe.export(demo_model_dir, root / wf, wf)) for wf in oe.WEIGHT_FORMATS}


@pytest.fixture(scope="module")
def chat_prompts():
    recs = corpus.load_records("diagnosis", limit=4) + corpus.load_records("discharge", limit=4)
    return [prompts.render_chat([{"role": "user", "content": r["input"]}]) for r in recs]


@pytest.fixture(scope="module")
def fp32_outputs(demo_model_dir, chat_prompts):
    return PyTorchBackend.load(demo_model_dir).generate(chat_prompts, 32, batch_size=1)


def test_export_writes_compressed_stateful_ir_with_tokenizer(irs, demo_model_dir):
    cfg = json.loads((demo_model_dir / "config.json").read_text())
    for wf, (path, manifest) in irs.items():
        assert oe.is_complete(path)
        assert EXPECTED_WEIGHTS[wf] in manifest["weight_element_types"]
        assert manifest["command"].startswith("optimum-cli export openvino") and f"--weight-format {wf}" in manifest["command"]
        state = oe.state_summary(path)
        assert state["ReadValue"] == state["Assign"] == 2 * cfg["num_hidden_layers"]
        assert "beam_idx" in state["inputs"] and "past_key_values" not in " ".join(state["inputs"])
    assert irs["int4"][1]["int4_group_size"] == 64  # largest of 128/64/32 dividing 64 and 192
    sizes = {wf: m["ir_bytes"] for wf, (_, m) in irs.items()}
    assert sizes["int4"] < sizes["int8"] < sizes["fp16"]


def test_export_is_idempotent_and_rebuilds_a_partial_ir(irs, demo_model_dir, tmp_path):
    path, _ = irs["int8"]
    assert oe.export(demo_model_dir, path, "int8")["skipped"] is True
    partial = tmp_path / "partial"
    shutil.copytree(path, partial)
    (partial / oe.MANIFEST).unlink()
    (partial / "openvino_model.bin").write_bytes(b"")
    assert not oe.is_complete(partial)
    result = oe.export(demo_model_dir, partial, "int8")
    assert result["skipped"] is False and oe.is_complete(partial)


def test_f32_fp16_ir_gives_fp32_tokens_in_both_runtimes(irs, chat_prompts, fp32_outputs):
    path = irs["fp16"][0]
    optimum = OptimumOVBackend.load(path, "f32")
    assert optimum.compiled_properties()["INFERENCE_PRECISION_HINT"].endswith("'float32'>")
    assert optimum.generate(chat_prompts, 32) == fp32_outputs
    assert GenAIBackend.load(path, "f32").generate(chat_prompts, 32) == fp32_outputs


def test_int8_at_stated_rate_and_genai_runs_every_format(irs, chat_prompts, fp32_outputs):
    for wf, (path, _) in irs.items():
        genai = GenAIBackend.load(path, "f32")
        outs = genai.generate(chat_prompts, 32)
        assert all(outs)
        if wf == "int8":
            exact = sum(a == b for a, b in zip(outs, fp32_outputs)) / len(outs)
            assert exact >= INT8_MIN_EXACT
    chunks = []
    GenAIBackend.load(irs["int4"][0]).generate(chat_prompts[:1], 8, streamer=chunks.append)
    assert chunks


def test_bad_input_is_named_and_leaves_nothing(demo_model_dir, tmp_path, irs):
    out = tmp_path / "x"
    with pytest.raises(MedwbError, match=r"int4_group_size 128 does not divide .*use one of \[64, 32, 16\]"):
        oe.export(demo_model_dir, out, "int4", int4_group_size=128)
    with pytest.raises(MedwbError, match="weight_formats: 'int3' is unknown"):
        oe.export(demo_model_dir, out, "int3")
    with pytest.raises(MedwbError, match="is not a model directory"):
        oe.export(tmp_path, out, "fp16")
    assert not out.exists()
    broken = tmp_path / "broken"
    shutil.copytree(irs["fp16"][0], broken)
    (broken / "openvino_model.bin").unlink()
    with pytest.raises(MedwbError, match="is missing openvino_model.bin"):
        OptimumOVBackend.load(broken)
    with pytest.raises(MedwbError, match="inference_precision 'f16' is not supported"):
        GenAIBackend.load(irs["fp16"][0], "f16")


NB = runner.NOTEBOOKS_DIR / "02_build_openvino_ir.ipynb"


def _execute(tmp_path, **params):
    out = tmp_path / "executed.ipynb"
    pm.execute_notebook(str(NB), str(out), kernel_name="medwb-main", cwd=str(tmp_path), progress_bar=False,
                        parameters={"run_dir": str(tmp_path), **params})
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.parametrize("params, expected", [
    ({"weight_formats": ["int4"], "int4_group_size": 128},
     r"int4_group_size 128 does not divide .*use one of \[64, 32, 16\]"),
    ({"weight_formats": ["fp16", "int3"]}, "weight_formats: 'int3' is unknown"),
    ({"model_path": "__NOT_A_MODEL__"}, "is not a model directory"),
    ({"inference_precision": "f16"}, "inference_precision 'f16' is not supported on CPU"),
])
def test_notebook_bad_input_names_the_parameter_and_writes_nothing(tmp_path, params, expected):
    if params.get("model_path") == "__NOT_A_MODEL__":
        (tmp_path / "notes").mkdir()
        params = {**params, "model_path": str(tmp_path / "notes")}
    out_dir = tmp_path / "ir"
    with pytest.raises(pm.PapermillExecutionError) as err:
        _execute(tmp_path, out_dir=str(out_dir), **params)
    assert "MedwbError" in str(err.value) and re.search(expected, str(err.value))
    assert not out_dir.exists() and not (tmp_path / "records").exists()


def test_notebook_runs_headless_rebuilds_a_partial_ir_and_writes_records(tmp_path, irs):
    out_dir = tmp_path / "ir"
    # An IR folder missing its .bin (an interrupted copy): the notebook says so and rebuilds
    # it; the other two are complete and reused (exporting them again would test nothing new).
    for wf in oe.WEIGHT_FORMATS:
        shutil.copytree(irs[wf][0], out_dir / wf)
    (out_dir / "int8" / "openvino_model.bin").unlink()
    executed = _execute(tmp_path, out_dir=str(out_dir), n_prompts=4, max_new_tokens=16, trials=1,
                        stateless_input_tokens=256)
    text = json.dumps([o for c in executed["cells"] for o in c.get("outputs", [])], ensure_ascii=False)
    assert "is incomplete (missing openvino_model.bin" in text and "rebuilding it" in text
    for wf in oe.WEIGHT_FORMATS:
        assert oe.is_complete(out_dir / wf)
        assert (out_dir / wf / "openvino_tokenizer.xml").exists() and (out_dir / wf / "openvino_detokenizer.xml").exists()
        assert "optimum-cli export openvino" in text and f"--weight-format {wf}" in text
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temp folders left
    recs = jsonl.read(tmp_path / "records" / "openvino.jsonl")
    assert not [r for r in recs if r.get("error")]
    measured = [r for r in recs if r.get("experiment") != "stateful-vs-stateless" and r["backend"] == "openvino"]
    assert {(r["weight_format"], r["route"]) for r in measured} == {
        (wf, rt) for wf in oe.WEIGHT_FORMATS for rt in ("openvino-optimum", "openvino-genai")}
    for r in measured:
        assert r["ttft_ms"] > 0 and r["tpot_ms"] > 0 and r["peak_rss_mb"] > 0 and r["size_bytes"] > 0
        if r["weight_format"] == "fp16":  # f32 inference on fp16 weights: FP32's exact tokens
            assert r["agreement_vs_fp32"]["exact_match_rate"] == 1.0
        if r["weight_format"] == "int8":
            assert r["agreement_vs_fp32"]["exact_match_rate"] >= INT8_MIN_EXACT
    pair = {r["stateful"]: r for r in recs if r.get("experiment") == "stateful-vs-stateless"}
    assert pair[True]["runtime_layer_types"].get("ScaledDotProductAttention", 0) > 0
    assert pair[True]["runtime_layer_types"].get("RoPE", 0) > 0
    assert pair[False]["runtime_layer_types"].get("MemoryInput", 0) == 0
    assert pair[True]["n_prompt_tokens"] == pair[False]["n_prompt_tokens"] == 256
    assert "the stateless IR needs" in text and "ScaledDotProductAttention" in text
    assert "CPU optimization capabilities" in text and "openvino_genai.LLMPipeline, streamed" in text
