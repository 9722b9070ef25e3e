"""The quantized route (bigdl env): backend protocol, low-bit round trip, kernel builds,
llm-convert/llm-cli, and bad input. Code runs in the bigdl interpreter."""
import json
from pathlib import Path

import papermill as pm
import pytest

from medwb import runner
from medwb.sysinfo import default_threads

from conftest import run_python

THREADS = default_threads()  # every core; the worker's share under make test (conftest)

# Stated rates for sym_int8 vs FP32 on 8 held-out prompts (both workflows), 32 greedy
# tokens each. Measured on the demo model: prefix agreement 0.85, logit cosine 0.99989.
INT8_MIN_PREFIX_AGREEMENT = 0.6
INT8_MIN_LOGIT_COSINE = 0.999


pytestmark = pytest.mark.slow  # loads or converts models, runs notebooks or servers

def test_sym_int8_agrees_with_fp32_and_low_bit_round_trip_is_exact(demo_model_dir, tmp_path):
    code = f"""
import json, medwb
from medwb.routes import bigdl as bigdl_route
recs = bigdl_route.api_route({str(demo_model_dir)!r}, ["sym_int8"], {str(tmp_path)!r}, {THREADS},
                             n_prompts=8, max_new_tokens=32, log=lambda *a: None)
from medwb.child import write_result; write_result(recs)
"""
    fp32, first, again = run_python("bigdl", code)
    assert fp32["precision"] == "fp32" and "error" not in first and "error" not in again
    a = first["agreement_vs_fp32"]
    assert a["prefix_agreement"] >= INT8_MIN_PREFIX_AGREEMENT
    assert a["last_token_logit_cosine"] >= INT8_MIN_LOGIT_COSINE
    assert again["source"] == "low-bit folder" and again["load"] == "load_low_bit"
    assert again["roundtrip_identical_tokens"] is True
    assert (tmp_path / "low_bit_sym_int8" / "config.json").exists()
    assert first["size_bytes"] < (demo_model_dir / "model.safetensors").stat().st_size


def test_kernel_build_is_reported_and_override_loads_the_requested_build(demo_model_dir):
    """avx2 is requested because any CPU that runs these tests has it."""
    code = f"""
import json, medwb
from medwb.routes import bigdl as bigdl_route
from medwb.child import write_result
write_result(bigdl_route.kernel_comparison({str(demo_model_dir)!r}, "sym_int4", {THREADS}, "avx2",
                                           n_prompts=1, max_new_tokens=4))
"""
    default, override = run_python("bigdl", code)
    assert set(default["kernel_builds"]) == {"llama"}  # read from the process, whatever it is
    assert override["kernel_builds"] == {"llama": "avx2"}


def test_cli_route_converts_and_runs_llm_cli(demo_model_dir, tmp_path):
    code = f"""
import json, medwb
from medwb.routes import bigdl as bigdl_route
recs, why = bigdl_route.cli_route({str(demo_model_dir)!r}, "llama", {str(tmp_path)!r}, {THREADS},
                                  "【医生】任务：鉴别诊断\\n主诉：胸痛2小时\\n【助手】", n_predict=8, log=lambda *a: None)
from medwb.child import write_result; write_result({{"recs": recs, "why": why}})
"""
    out = run_python("bigdl", code)
    assert out["why"] is None
    assert {r["precision"] for r in out["recs"]} == {"int4", "int8"}
    for r in out["recs"]:
        assert Path(r["file"]).stat().st_size == r["size_bytes"] > 0
        assert r["text"] and r["kernel_build"] and r["tpot_ms"] > 0
        assert r["convert_command"].startswith("llm-convert ")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_sentencepiece_export_covers_an_embedding_larger_than_the_tokenizer(demo_model_dir, tmp_path):
    """The random-weight shapes reuse the demo tokenizer under a 32000-row embedding;
    llm-convert refuses a tokenizer.model of another size ("Vocab size mismatch")."""
    import shutil
    big = tmp_path / "model"
    shutil.copytree(demo_model_dir, big)
    cfg = json.loads((big / "config.json").read_text())
    n_tokens, cfg["vocab_size"] = cfg["vocab_size"], 32000
    (big / "config.json").write_text(json.dumps(cfg))
    code = f"""
import sentencepiece as spm
from pathlib import Path
from medwb.backends.toolchain import llm_cli
from medwb.child import write_result
sizes = [spm.SentencePieceProcessor(model_file=str(llm_cli.sentencepiece_file(Path(p)))).get_piece_size()
         for p in ({str(demo_model_dir)!r}, {str(big)!r})]
sp = spm.SentencePieceProcessor(model_file=str(llm_cli.sentencepiece_file(Path({str(big)!r}))))
write_result({{"sizes": sizes, "ids": sp.encode("胸痛2小时")}})
"""
    out = run_python("bigdl", code)
    assert out["sizes"] == [n_tokens, 32000]
    assert out["ids"] and max(out["ids"]) < n_tokens  # the padding is never produced from text


def test_cli_route_explains_why_a_model_cannot_take_it(demo_model_dir, tmp_path):
    cfg = json.loads((demo_model_dir / "config.json").read_text())
    model = tmp_path / "gqa"
    model.mkdir()
    cfg.update(num_hidden_layers=12, num_key_value_heads=1)
    (model / "config.json").write_text(json.dumps(cfg))
    (model / "model.safetensors").write_bytes(b"")
    code = f"""
import json, medwb
from medwb.backends.toolchain import llm_cli
from pathlib import Path
from medwb.child import write_result
write_result(llm_cli.cli_route_problems(Path({str(model)!r}), "llama"))
"""
    problems = " ".join(run_python("bigdl", code))
    assert "pytorch_model.bin" in problems and "layers" in problems and "grouped-query" in problems


NB = runner.NOTEBOOKS_DIR / "01_quantize_bigdl.ipynb"


@pytest.mark.parametrize("params, expected", [
    ({"low_bits": ["sym_int4", "nf4"]}, "low_bits: 'nf4' raises 'not supported on CPU'"),
    ({"model_family": "bloom"}, "model_family 'bloom' does not match the checkpoint"),
    ({"model_path": "/nonexistent/model"}, "model_path '/nonexistent/model' does not exist"),
])
def test_notebook_bad_input_names_the_parameter_and_writes_nothing(tmp_path, params, expected):
    out_dir = tmp_path / "out"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(NB), str(tmp_path / "nb.ipynb"), kernel_name="medwb-bigdl",
                            parameters={"out_dir": str(out_dir), "run_dir": str(tmp_path), **params},
                            progress_bar=False, cwd=str(tmp_path))
    assert "MedwbError" in str(err.value) and expected in str(err.value)
    assert not out_dir.exists()
    assert not (tmp_path / "records").exists()


def test_notebook_runs_headless_and_writes_every_artifact(tmp_path, demo_model_dir):
    out_dir = tmp_path / "bigdl"
    pm.execute_notebook(str(NB), str(tmp_path / NB.name), kernel_name="medwb-bigdl", cwd=str(tmp_path),
                        progress_bar=False,
                        parameters={"run_dir": str(tmp_path), "out_dir": str(out_dir), "n_prompts": 2,
                                    "max_new_tokens": 8, "low_bits": ["sym_int4", "sym_int8"],
                                    "kernel_build": "avx2"})
    assert (out_dir / "bigdl_llm_llama_q4_0.bin").stat().st_size > 0
    assert (out_dir / "bigdl_llm_llama_q8_0.bin").stat().st_size > 0
    for lb in ("sym_int4", "sym_int8"):
        assert (out_dir / f"low_bit_{lb}" / "config.json").exists()
    records = [json.loads(line) for line in (tmp_path / "records" / "bigdl.jsonl").read_text().splitlines()]
    assert not [r for r in records if r.get("error")]
    cli = [r for r in records if r["route"] == "bigdl-cli"]
    assert {r["precision"] for r in cli} == {"int4", "int8"} and all(r["text"] for r in cli)
    api = {(r["precision"], r.get("source")) for r in records if r["route"] == "bigdl-api"}
    assert {("sym_int4", "low-bit folder"), ("sym_int8", "original checkpoint")} <= api
    assert any(r.get("kernel_choice") == "override: avx2" for r in records)
    executed = json.loads((tmp_path / NB.name).read_text())
    text = json.dumps([o for c in executed["cells"] for o in c.get("outputs", [])], ensure_ascii=False)
    assert "template variables" in text  # the LangChain section ran


def test_a_kernel_shadow_left_by_a_deleted_checkout_is_made_again(tmp_path):
    """The medwb cache is shared by every checkout on a machine: a shadow of bigdl's libs
    whose links point into a venv that is gone must not be trusted (it once made every
    bigdl variant fail with "Shared library with base name 'llama' not found")."""
    out = run_python("bigdl", """
import os
from medwb.backends.toolchain import bigdl_kernels as k
from medwb.child import write_result
shadow = k.shadow_libs("avx2")
link = shadow / "libllama_avx2.so"
os.remove(link)
os.symlink("/nonexistent/checkout/libllama_avx2.so", link)  # as a deleted clone leaves it
again = k.shadow_libs("avx2")
write_result({"same": str(again) == str(shadow), "ok": all(p.exists() for p in again.iterdir())})
""", extra_env={"MEDWB_CACHE": str(tmp_path)})
    assert out == {"same": True, "ok": True}


def test_llm_cli_output_is_put_back_into_utf8():
    """llm-cli prints a partial-character token in its ByteLevel spelling and a byte token as
    the raw byte (here a surrogate, as decoded with surrogateescape): both come back as the
    character; real ×, ° and μ in the text stay."""
    from medwb.backends.toolchain.llm_cli import repair_text
    printed = "上è¿\udcb0句子中的å®\udc9e体，血压90/56mmHg，3.5cm×3.0cm，38.5°C，52μmol/L"
    assert repair_text(printed) == "上述句子中的实体，血压90/56mmHg，3.5cm×3.0cm，38.5°C，52μmol/L"
    assert repair_text("末尾\udce8") == "末尾\ufffd"  # a model stopped inside a character
