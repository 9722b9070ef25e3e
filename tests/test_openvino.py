"""OpenVINO route foundations (main env): export, stateful IR, both runtimes, bad input."""
import json
import shutil

import pytest

from medwb import corpus, openvino_export as oe, prompts
from medwb.backends.openvino import OptimumOVBackend
from medwb.backends.openvino_genai import GenAIBackend
from medwb.backends.pytorch import PyTorchBackend
from medwb.errors import MedwbError

EXPECTED_WEIGHTS = {"fp16": "f16", "int8": "u8", "int4": "u4"}
# Stated rate: int8 weights at f32 precision vs FP32 PyTorch (measured 7/8 and 8/8).
INT8_MIN_EXACT = 0.75


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
