"""#33 the model families: the architecture registry (medwb.models.architectures) reads each
family's config into the shape transformers builds, the floor reads what a token reads (a
tied table whole), unknown architectures are refused in one line, the default matrix keeps
the routes that take a family and records the others with why, and (slow) every route the
registry says takes a family decodes a tiny checkpoint of it as PyTorch FP32 does."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medwb.errors import MedwbError
from medwb.models import architectures, random_weights

REPO = Path(__file__).resolve().parents[1]
NATIVE = [a.name for a in architectures.ARCHITECTURES.values() if a.transformers_class]


@pytest.fixture(scope="module")
def tiny_dirs():
    return {f: random_weights.tiny(f, log=lambda *_: None) for f in NATIVE}


@pytest.mark.parametrize("family", NATIVE)
def test_the_registry_counts_the_parameters_transformers_builds(family):
    arch = architectures.ARCHITECTURES[family]
    cfg = {**arch.tiny, "vocab_size": 1024}
    model = random_weights.build(arch, cfg)
    shape = architectures.shape(cfg)
    assert shape.parameters == sum(p.numel() for p in model.parameters())  # a tied table once
    assert shape.tied == bool(model.config.tie_word_embeddings)
    # One token reads every weight once and one row of the input table, or the whole table
    # when it is also the output layer.
    assert shape.read_per_token == shape.parameters - (0 if shape.tied else shape.embedding - shape.hidden)


def test_real_shapes_and_what_a_tied_table_costs_the_floor():
    sizes = {n: architectures.shape(c) for n, c in random_weights.SHAPES.items()}
    # The published sizes of these models (their model cards), to 1%.
    for name, billions in {"qwen2.5-1.5b": 1.54, "qwen3-1.7b": 1.72, "llama3.2-3b": 3.21, "glm-4-9b": 9.40,
                           "tinyllama-1.1b": 1.10}.items():
        assert sizes[name].parameters / 1e9 == pytest.approx(billions, rel=0.01), name
    qwen = sizes["qwen2.5-1.5b"]
    assert qwen.tied and qwen.read_share == 1.0 and 0.14 < qwen.embedding / qwen.parameters < 0.16
    assert sizes["tinyllama-1.1b"].read_share < 0.95  # untied: the input table is not read
    # Grouped-query attention: the KV cache counts KV heads (Qwen2.5-1.5B: 2 of 12).
    assert qwen.kv_bytes_per_token(1000, 2) == 2 * 28 * 2 * 128 * 1000 * 2


def test_an_unknown_architecture_is_one_line_naming_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "medwb", "doctor", "--model", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "mamba (MambaForCausalLM) is not supported" in err[0] and "qwen2 (Qwen2ForCausalLM)" in err[0]
    with pytest.raises(MedwbError, match="remote-code family"):
        random_weights.tiny("chatglm")


def test_the_default_matrix_keeps_the_routes_that_take_the_family(tiny_dirs):
    from medwb.bench.config import load_config, validate
    checked = validate(load_config(model=str(tiny_dirs["qwen2"])))
    kept = {f"{v['backend']}:{v['precision']}" for v in checked["variants"]}
    assert "pytorch:fp32" in kept and "llama.cpp:q4_0" in kept and not any(k.startswith("bigdl") for k in kept)
    assert set(checked["left_out"]) == {"bigdl:sym_int4", "bigdl:sym_int8", "bigdl-cli:int4"}
    assert "transformers 4.31" in checked["left_out"]["bigdl:sym_int4"]
    # A variant the user names on a route that does not take the family: refused, saying why.
    with pytest.raises(MedwbError, match=r"variants\[0\].*qwen2 models: bigdl-llm 2.4 pins transformers 4.31"):
        validate(load_config(model=str(tiny_dirs["qwen2"]), variants=[{"backend": "bigdl", "precision": "sym_int4"}]))
    # The demo model (llama) keeps the whole matrix; a Llama-3 style folder (RoPE base 500000,
    # grouped-query, 2 layers) leaves out bigdl (transformers 4.31 would ignore its RoPE base)
    # and llm-cli, each saying why.
    assert validate(load_config())["left_out"] == {}
    llama3 = validate(load_config(model=str(tiny_dirs["llama"])))["left_out"]
    assert set(llama3) == {"bigdl:sym_int4", "bigdl:sym_int8", "bigdl-cli:int4"}
    assert "rope_theta 500000" in llama3["bigdl:sym_int4"] and "grouped-query" in llama3["bigdl-cli:int4"]


def test_doctor_prints_each_folders_route_matrix(tiny_dirs):
    proc = subprocess.run([sys.executable, "-m", "medwb", "doctor", "--json", "--model", str(tiny_dirs["qwen3"]),
                           str(tiny_dirs["llama"])], cwd=REPO, capture_output=True, text=True, timeout=600)
    out = json.loads(proc.stdout)
    qwen3, llama = out["routes"]
    assert qwen3["family"] == "qwen3" and qwen3["tied_embeddings"] and llama["family"] == "llama"
    rows = {r["variant"]: r for r in qwen3["routes"]}
    assert rows["openvino-genai:int4/bf16"]["takes"] and not rows["bigdl:sym_int4"]["takes"]
    assert "ipex-llm" in rows["bigdl:sym_int4"]["why"] and rows["pytorch:fp32"]["ram_gib"] > 0
    assert not {r["variant"]: r for r in llama["routes"]}["bigdl-cli:int4"]["takes"]  # 2 layers: llm-cli refuses


# The variants that must decode exactly as PyTorch FP32 (FP32 compute; FP16-stored weights in
# the IR are exact for these weights' range).
FULL_PRECISION = ("pytorch:fp32", "openvino-optimum:fp16/f32", "openvino-genai:fp16/f32", "llama.cpp:f32")


@pytest.mark.slow
@pytest.mark.parametrize("family", NATIVE)
def test_every_route_that_takes_the_family_decodes_it_as_pytorch_fp32(family, tiny_dirs, tmp_path):
    arch = architectures.ARCHITECTURES[family]
    variants = [v for v in FULL_PRECISION if not arch.route_problem(v.split(":")[0])]
    assert len(variants) >= 2, f"{family}: no route but PyTorch takes it"
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "medwb", "bench", "--no-progress", "--model", str(tiny_dirs[family]),
                           "--variants", ",".join(variants), "--token-pairs", "16-8", "--trials", "1",
                           "--quality-cases", "2", "--run-dir", str(run)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    recs = {r["variant"]: r for r in map(json.loads, (run / "records" / "bench.jsonl").read_text().splitlines())
            if r["record_type"] == "variant"}
    shape = architectures.shape(json.loads((tiny_dirs[family] / "config.json").read_text()))
    for name in variants:
        r = recs[name]
        assert not r.get("error"), f"{family} on {name}: {r.get('error')}"
        if name != "pytorch:fp32":  # the same greedy tokens on the held-out prompts (4 prompts, 16 tokens)
            assert r["agreement_vs_fp32"]["exact_match_rate"] == 1.0, (name, r["agreement_vs_fp32"])
        if name in ("pytorch:fp32", "llama.cpp:f32"):  # FP32 weights: the floor reads 4 bytes per weight read
            assert r["weights_read_bytes"] == pytest.approx(4 * shape.read_per_token, rel=0.01), name


def test_the_docs_route_matrix_is_the_registrys():
    page = (REPO / "docs" / "bring-your-own-model.md").read_text(encoding="utf-8")
    shown = page.split("<!-- route-matrix:begin -->\n", 1)[1].split("\n<!-- route-matrix:end -->", 1)[0]
    assert shown == architectures.matrix_markdown(), \
        "docs/bring-your-own-model.md's route matrix is stale: paste `python -m medwb.models.architectures`"
