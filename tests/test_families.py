"""#33 the model families: the architecture registry (medwb.models.architectures) reads each
family's config into the shape transformers builds, the floor reads what a token reads (a
tied table whole), unknown architectures are refused in one line, the default matrix keeps
the routes that take a family and records the others with why, and (slow) every route the
registry says takes a family decodes a tiny checkpoint of it as PyTorch FP32 does."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from medwb.errors import MedwbError
from medwb.models import architectures, random_weights

REPO = Path(__file__).resolve().parents[1]
# `make test` runs two pytest-xdist workers; this module's tests stay on one of them: its module
# fixtures convert every tiny family on every route once, for the worker that has them.
pytestmark = pytest.mark.xdist_group("families")
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


@pytest.mark.parametrize("family", ["llama", "qwen3", "glm"])
def test_a_shape_is_written_shard_by_shard_from_the_meta_device(family, tmp_path, monkeypatch):
    """How a 7-9 B shape is built on a machine that cannot hold its FP32 copy: the shards
    transformers reads back hold every parameter of the family's model once, in the dtype
    asked, with transformers' init (norms 1, biases 0, weights ~N(0, 0.02))."""
    import torch
    from transformers import AutoModelForCausalLM

    from medwb.models import demo_model
    arch = architectures.ARCHITECTURES[family]
    cfg = {**arch.tiny, "vocab_size": 1024, "tie_word_embeddings": family == "qwen3"}
    monkeypatch.setattr(random_weights, "SHARD_BYTES", 64 << 10)  # several shards of a tiny model
    with torch.device("meta"):
        meta = random_weights.build(arch, cfg)
    nbytes = random_weights.write_streamed(meta, tmp_path, "bfloat16")
    demo_model.write_config(meta, tmp_path, "bfloat16")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and index["metadata"]["total_size"] == nbytes
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype="auto")
    reference = random_weights.build(arch, cfg)
    assert {n: tuple(p.shape) for n, p in loaded.named_parameters()} == \
        {n: tuple(p.shape) for n, p in reference.named_parameters()}
    assert nbytes == 2 * sum(p.numel() for p in reference.parameters())  # bf16, a tied table once
    assert loaded.dtype == torch.bfloat16 and json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == \
        "bfloat16"
    params = dict(loaded.named_parameters())
    assert all(float(p.detach().float().std()) == pytest.approx(0.02, rel=0.2) for n, p in params.items()
               if n.endswith("proj.weight"))
    assert all(bool((p == 1).all()) for n, p in params.items() if "norm" in n)
    assert all(bool((p == 0).all()) for n, p in params.items() if n.endswith(".bias"))
    out = loaded.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 6)
    # Converters keep the 16-bit type: a BF16 GGUF, and the Intel route loads it as it is.
    from medwb.backends.toolchain import gguf_export
    from medwb.paths import checkpoint_dtype
    assert checkpoint_dtype(tmp_path) == "bfloat16" and gguf_export.outtype(tmp_path) == "bf16"
    # llm-convert's pytorch_model.bin, added beside the shards: the same tensors
    from safetensors.torch import load_file
    random_weights._add_bin(family, tmp_path, log=lambda *_: None)
    state = torch.load(tmp_path / "pytorch_model.bin")
    shards = {}
    for f in tmp_path.glob("*.safetensors"):
        shards.update(load_file(str(f)))
    assert state.keys() == shards.keys() and all(torch.equal(state[k], shards[k]) for k in shards)
    assert not list(tmp_path.glob(".pytorch_model.bin.tmp-*"))


def test_a_shape_gets_pytorch_model_bin_only_when_llm_cli_may_run(monkeypatch):
    """llm-convert reads only pytorch_model.bin, which torch.save writes from memory whole:
    a 7B shape's bench without bigdl-cli must not need it (it would not fit 24 GiB)."""
    from medwb.backends import variants
    from medwb.bench.config import load_config, validate
    asked = []
    monkeypatch.setattr(random_weights, "ensure", lambda name, with_bin=False, log=print: asked.append(with_bin)
                        or (_ for _ in ()).throw(MedwbError("stop here")))
    for chosen, expected in ((["llama.cpp:q4_0", "bigdl:sym_int4"], False), (["bigdl-cli:int4"], True), (None, True)):
        cfg = load_config(model="shape:llama2-7b", **({"variants": variants.parse_variants(",".join(chosen))} if chosen else {}))
        with pytest.raises(MedwbError, match="stop here"):
            validate(cfg)
        assert asked.pop() is expected, chosen


def test_an_unknown_architecture_is_one_line_naming_the_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    proc = subprocess.run([sys.executable, "-m", "medwb", "doctor", "--model", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert "mamba (MambaForCausalLM) is not supported" in err[0] and "qwen2 (Qwen2ForCausalLM)" in err[0]
    with pytest.raises(MedwbError, match="tiny checkpoints are built for llama"):
        random_weights.tiny("mamba")


def test_the_default_matrix_keeps_the_routes_that_take_the_family(tiny_dirs):
    from medwb.bench.config import load_config, validate
    checked = validate(load_config(model=str(tiny_dirs["qwen2"])))
    kept = {f"{v['backend']}:{v['precision']}" for v in checked["variants"]}
    assert "pytorch:fp32" in kept and "llama.cpp:q4_0" in kept and not any(k.startswith("bigdl") for k in kept)
    # The Intel quantized route through bigdl-llm's successor, where bigdl-llm 2.4 cannot load it.
    assert {"ipex-llm:sym_int4", "ipex-llm:sym_int8"} <= kept
    assert set(checked["left_out"]) == {"bigdl:sym_int4", "bigdl:sym_int8", "bigdl-cli:int4"}
    assert "transformers 4.31" in checked["left_out"]["bigdl:sym_int4"]
    # A variant the user names on a route that does not take the family: refused, saying why.
    with pytest.raises(MedwbError, match=r"variants\[0\].*qwen2 models: bigdl-llm 2.4 pins transformers 4.31"):
        validate(load_config(model=str(tiny_dirs["qwen2"]), variants=[{"backend": "bigdl", "precision": "sym_int4"}]))
    # The demo model (llama) keeps the whole matrix; a Llama-3 style folder (RoPE base 500000,
    # grouped-query, 2 layers) leaves out bigdl (transformers 4.31 would ignore its RoPE base)
    # and llm-cli, each saying why.
    # ipex-llm stands in for bigdl-llm only where bigdl's route does not take the model.
    demo = validate(load_config())["left_out"]
    assert set(demo) == {"ipex-llm:sym_int4", "ipex-llm:sym_int8"}
    assert "bigdl:sym_int4 takes this model" in demo["ipex-llm:sym_int4"]
    llama3 = validate(load_config(model=str(tiny_dirs["llama"])))["left_out"]
    assert set(llama3) == {"bigdl:sym_int4", "bigdl:sym_int8", "bigdl-cli:int4"}
    assert "rope_theta 500000" in llama3["bigdl:sym_int4"] and "grouped-query" in llama3["bigdl-cli:int4"]
    # Named by the user, both run side by side on the demo model.
    both = [{"backend": "bigdl", "precision": "sym_int4"}, {"backend": "ipex-llm", "precision": "sym_int4"}]
    assert len(validate(load_config(variants=both))["variants"]) == 2
    # Qwen3 and GLM-4-0414: newer than the ipex env's transformers 4.47, refused saying so.
    qwen3 = validate(load_config(model=str(tiny_dirs["qwen3"])))["left_out"]
    assert "predates this architecture (added in 4.51)" in qwen3["ipex-llm:sym_int4"]


@pytest.mark.slow  # 10-16 s (AVX2-only EPYC): kept out of the 3-minute tier
def test_doctor_prints_each_folders_route_matrix(tiny_dirs):
    proc = subprocess.run([sys.executable, "-m", "medwb", "doctor", "--json", "--model", str(tiny_dirs["qwen3"]),
                           str(tiny_dirs["llama"])], cwd=REPO, capture_output=True, text=True, timeout=600)
    out = json.loads(proc.stdout)
    qwen3, llama = out["routes"]
    assert qwen3["family"] == "qwen3" and qwen3["tied_embeddings"] and llama["family"] == "llama"
    rows = {r["variant"]: r for r in qwen3["routes"]}
    assert rows["openvino-genai:int4/bf16"]["takes"] and not rows["bigdl:sym_int4"]["takes"]
    assert "transformers 4.31" in rows["bigdl:sym_int4"]["why"] and rows["pytorch:fp32"]["ram_gib"] > 0
    assert not rows["ipex-llm:sym_int4"]["takes"] and "4.51" in rows["ipex-llm:sym_int4"]["why"]
    lrows = {r["variant"]: r for r in llama["routes"]}
    assert lrows["ipex-llm:sym_int4"]["takes"] and "archived" in lrows["ipex-llm:sym_int4"]["note"]
    ipex = {c["check"]: c for c in out["checks"]}["ipex environment"]
    assert ipex["status"] == "WARN" and "ipex-llm 2.2.0" in ipex["detail"] and "archived" in ipex["detail"]
    assert not {r["variant"]: r for r in llama["routes"]}["bigdl-cli:int4"]["takes"]  # 2 layers: llm-cli refuses


# The variants that must decode exactly as PyTorch FP32 (FP32 compute; FP16-stored weights in
# the IR are exact for these weights' range).
FULL_PRECISION = ("pytorch:fp32", "openvino-optimum:fp16/f32", "openvino-genai:fp16/f32", "llama.cpp:f32")

# Every family's conversions in one main-env process, then the benchmark's probe (the code a
# benchmark runs in each variant's process) over every family in one process per environment:
# a benchmark per family spent ~70 s each on process starts, the models themselves ~1 s
# (AMD EPYC with AVX2). The benchmark's own record path runs per family where a route is
# family-specific (ipex-llm, ChatGLM, Baichuan2 below) and on the demo model (test_bench).
_CONVERT = r"""
import json, sys
from medwb.backends.openvino import ir_weights_read
from medwb.backends.toolchain import gguf_export, openvino_export
from medwb.child import write_result
out = {}
for family, folder, ir, gguf in json.loads(sys.argv[1]):  # ir, gguf: None where the route refuses it
    out[family] = {"gguf": gguf and gguf_export.convert(folder, gguf)}
    if ir:
        exported = openvino_export.export(folder, ir, "fp16")
        out[family].update(ir_weights_read=ir_weights_read(ir), ir_types=exported["weight_element_types"])
write_result(out)
"""
_PROBES = r"""
import json, sys
from medwb.bench.probe import probe
from medwb.child import write_result
out = []
for spec in json.loads(open(sys.argv[1], encoding="utf-8").read()):
    try:
        out.append(probe(spec))
    except Exception as e:  # kept per spec: one family's failure names itself
        out.append({"error": f"{type(e).__name__}: {e}"})
write_result(out)
"""


def _in_env(env: str, code: str, *args) -> object:
    from medwb import child, envs
    return child.run([str(envs.require(env)), "-c", code, *map(str, args)], timeout=1200, cwd=REPO, what=env)


@pytest.fixture(scope="module")
def route_results(tiny_dirs, tmp_path_factory):
    """{family: {variant: (artifact, probe result)}} for every full-precision route that takes it."""
    from medwb.backends import registry, variants as vs
    from medwb.backends.toolchain import gguf_export
    from medwb.bench import run
    root = tmp_path_factory.mktemp("routes")
    takes = {f: [v for v in FULL_PRECISION if not architectures.ARCHITECTURES[f].route_problem(v.split(":")[0])]
             for f in NATIVE}
    converted = _in_env("main", _CONVERT, json.dumps([
        (f, str(tiny_dirs[f]), str(root / f / "ir") if "openvino-genai:fp16/f32" in takes[f] else None,
         str(root / f / "gguf") if "llama.cpp:f32" in takes[f] else None) for f in NATIVE]))
    cfg = {"token_pairs": [[16, 8]], "trials": 1}
    jobs = {}  # env: [(family, variant name, artifact, spec)]
    for family, names in takes.items():
        folder = tiny_dirs[family]
        cases = run.quality_cases(2, speed_only=True, model_dir=folder)
        made = converted[family]
        arts = {"pytorch": registry.get("pytorch").prepare(folder, vs.parse_variants("pytorch:fp32")[0], root, cfg),
                "openvino-optimum": {"path": root / family / "ir", "weights_read_bytes": made.get("ir_weights_read")},
                "llama.cpp": {"path": root / family / "gguf" / gguf_export.MODEL_FILE,
                              "weights_read_bytes": (made["gguf"] or {}).get("weights_read_bytes")}}
        arts["openvino-genai"] = arts["openvino-optimum"]
        for name in names:
            (v,) = vs.parse_variants(name)
            art = arts[v["backend"]]
            spec = run.probe_spec(v, {**art, "path": str(art["path"])}, cfg, 2, cases[0]["prompt"], cases, None)
            jobs.setdefault(registry.get(v["backend"]).env, []).append((family, name, art, spec))
    results = {f: {} for f in NATIVE}
    for env, items in jobs.items():
        specs = root / f"{env}-specs.json"
        specs.write_text(json.dumps([spec for *_, spec in items], ensure_ascii=False), encoding="utf-8")
        for (family, name, art, _), got in zip(items, _in_env(env, _PROBES, specs)):
            results[family][name] = (art, got)
    return {"takes": takes, "results": results, "converted": converted}


@pytest.mark.slow
@pytest.mark.parametrize("family", NATIVE)
def test_every_route_that_takes_the_family_decodes_it_as_pytorch_fp32(family, tiny_dirs, route_results):
    from medwb.bench.run import weights_read_per_token
    names = route_results["takes"][family]
    assert len(names) >= 2, f"{family}: no route but PyTorch takes it"
    got = route_results["results"][family]
    shape = architectures.shape(json.loads((tiny_dirs[family] / "config.json").read_text()))
    reference = got["pytorch:fp32"][1]
    assert len(reference.get("output_ids") or []) == 4 and all(reference["output_ids"]), reference.get("error")
    if "openvino-genai:fp16/f32" in names:
        assert "f16" in route_results["converted"][family]["ir_types"]
    for name in names:
        art, result = got[name]
        assert not result.get("error"), f"{family} on {name}: {result.get('error')}"
        assert result["pairs"][0]["tpot_ms"] > 0
        # the same greedy tokens on the held-out prompts (4 prompts, 16 tokens)
        assert result["output_ids"] == reference["output_ids"], (name, result["texts"], reference["texts"])
    # FP32 weights: the floor reads 4 bytes per weight read, as the record computes it
    # (PyTorch: the checkpoint's size scaled by what a token reads; llama.cpp: the F32 GGUF's tensor table)
    for name in ("pytorch:fp32", "llama.cpp:f32"):
        if name in got:
            art = got[name][0]
            read, _ = weights_read_per_token(art, art.get("bytes") or 0, shape)
            assert read == pytest.approx(4 * shape.read_per_token, rel=0.01), name


def test_the_docs_route_matrix_is_the_registrys():
    page = (REPO / "docs" / "bring-your-own-model.md").read_text(encoding="utf-8")
    shown = page.split("<!-- route-matrix:begin -->\n", 1)[1].split("\n<!-- route-matrix:end -->", 1)[0]
    assert shown == architectures.matrix_markdown(), \
        "docs/bring-your-own-model.md's route matrix is stale: paste `python -m medwb.models.architectures`"


# Run in the ipex env: what the ipex-llm route computes for a tiny checkpoint, beside what the
# main env's transformers gives (token ids) and what the same low-bit weights give without
# ipex-llm's fused kernels (logits, prefill then cached decode, where RoPE positions matter).
_IPEX_CHILD = r"""
import json, sys, torch
import medwb
from medwb.backends.ipex import IpexBackend
from ipex_llm.transformers import AutoModelForCausalLM
folder, text, fused = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
out = {"ids": IpexBackend.tokenizer_of(folder).encode(text)}
ids = torch.tensor([[(i * 37) % 1000 + 5 for i in range(48)]])
logits = {}
for opt in ((True, False) if fused else (False,)):
    m = AutoModelForCausalLM.from_pretrained(folder, load_in_low_bit="sym_int8", optimize_model=opt,
                                             torch_dtype=torch.float32)
    out.setdefault("attention", []).append(type(m.model.layers[0].self_attn).forward.__module__
                                           if not opt else m.model.layers[0].self_attn.forward.__func__.__module__)
    with torch.inference_mode():
        step = m(input_ids=ids[:, :40], use_cache=True)
        rows, past = [step.logits[0, -1]], step.past_key_values
        for i in range(40, 48):
            step = m(input_ids=ids[:, i:i + 1], past_key_values=past, use_cache=True)
            rows.append(step.logits[0, -1]); past = step.past_key_values
    logits[opt] = torch.stack(rows)
if fused:
    out["max_diff"] = (logits[True] - logits[False]).abs().max().item()
    out["scale"] = logits[False].abs().max().item()
print(json.dumps(out))
"""
IPEX_FAMILIES = [a.name for a in architectures.ARCHITECTURES.values()
                 if a.transformers_class and not a.route_problem("ipex-llm")]


@pytest.mark.slow
@pytest.mark.parametrize("family", IPEX_FAMILIES)
def test_the_ipex_route_runs_each_family_it_takes(family, tiny_dirs, tmp_path):
    """ipex-llm 2.2 (bigdl-llm's successor, its own env): the same token ids as the main env,
    its fused attention computing what transformers' own does on the same low-bit weights
    (prefill and cached decode: RoPE base and positions included), and (qwen2) a bench record
    from its own kernels (the build matching this CPU, not the vendor-string pick)."""
    from medwb import envs
    from medwb.backends.pytorch import load_tokenizer
    from medwb.backends.toolchain.bigdl_kernels import matching_build
    arch = architectures.ARCHITECTURES[family]
    folder = tiny_dirs[family]
    text = "患者发热三天，咳嗽。" + "".join(arch.special_tokens[:4])
    fused = not arch.unfused.get("ipex-llm")
    proc = subprocess.run([str(envs.require("ipex")), "-c", _IPEX_CHILD, str(folder), text, "1" if fused else "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["ids"] == load_tokenizer(folder).encode(text)
    if fused:
        assert got["attention"][0].startswith("ipex_llm.") and got["attention"][1].startswith("transformers.")
        assert got["max_diff"] <= 1e-4 * got["scale"], got
    if family != "qwen2":  # the record path once (qwen2: unfused, a tied table), the suite's time elsewhere
        return
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "medwb", "bench", "--no-progress", "--model", str(folder),
                           "--variants", "pytorch:fp32,ipex-llm:sym_int8", "--token-pairs", "16-8", "--trials", "1",
                           "--quality-cases", "2", "--run-dir", str(run)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rec = {r["variant"]: r for r in map(json.loads, (run / "records" / "bench.jsonl").read_text().splitlines())
           if r["record_type"] == "variant"}["ipex-llm:sym_int8"]
    assert not rec.get("error") and rec["tpot_ms"] > 0 and rec["kernels"] == f"ipex-llm {matching_build()} build"
    assert ("optimize_model=False" in rec["load"]) == (not fused)
    # q8_0 blocks: 34 bytes per 32 weights, norms in FP32: about 1.06 bytes per weight read.
    shape = architectures.shape(json.loads((folder / "config.json").read_text()))
    assert 1.0 < rec["weights_read_bytes"] / shape.read_per_token < 1.2, rec["weights_read_bytes"]


# Chat templates of the shapes hospitals bring (written here, as the families publish them in
# outline): ChatML (Qwen2.5/Qwen3), Llama-3 (bos_token and headers), GLM-4 ([gMASK]<sop>).
TEMPLATES = {
    "chatml": "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}",
    "llama3": "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
              "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
              "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    "glm4": "[gMASK]<sop>{% for item in messages %}{% if item['role'] == 'user' %}<|user|>\n{{ item['content'] }}"
            "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
}


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_prompts_go_through_the_models_own_chat_template(name, tiny_dirs, tmp_path):
    """The benchmark, the evaluation and the apps' model processes render a folder's chat
    template with jinja2 (some environments cannot load its tokenizer): the same text as
    transformers' apply_chat_template; and the apps' prompt fitting wraps the case in it."""
    import shutil

    from transformers import AutoTokenizer

    from medwb.apps.diagnosis import record
    from medwb.models import chat
    folder = tmp_path / "model"
    shutil.copytree(tiny_dirs["qwen2"], folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": TEMPLATES[name]}))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    text = "患者，男，65岁。主诉：胸痛3天。"
    tok = AutoTokenizer.from_pretrained(folder)
    want = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    assert chat.chat_prompts(folder, [text]) == [want]
    fields = {k: "无" for k, _ in record.FIELDS} | {"chief_complaint": "胸痛3天"}
    prompt, ids, warning = record.fit_prompt(fields, tok.encode, 1024, 64,
                                             chat=chat.renderer(chat.template_of(folder)))
    assert prompt == tok.apply_chat_template([{"role": "user", "content": record.prompts.DIAGNOSIS_PROMPT.format(
        **fields)}], tokenize=False, add_generation_prompt=True) and warning is None


# A remote-code family (#33): ChatGLM2/3 / GLM-4 chat folders carry their own modeling code.
# None can be fetched offline, so the tiny checkpoint carries the ChatGLM-layout code written
# in medwb/models/remote_code/chatglm; the routes' own ChatGLM implementations (bigdl-llm's and
# ipex-llm's fused kernels, llama.cpp's graph) are checked against it.
@pytest.fixture(scope="module")
def chatglm_dir():
    return random_weights.tiny("chatglm", log=lambda *_: None)


def _without_consent() -> dict:
    import os
    return {k: v for k, v in os.environ.items() if k != architectures.TRUST_ENV}


def test_a_remote_code_folder_runs_only_with_the_users_consent(chatglm_dir, tmp_path, monkeypatch):
    from safetensors import safe_open
    from medwb import doctor
    from medwb.backends.variants import resolve_model
    cfg = json.loads((chatglm_dir / "config.json").read_text())
    with safe_open(str(chatglm_dir / "model.safetensors"), "pt") as f:  # the weights the code loads, counted
        written = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert written == architectures.shape(cfg).parameters
    assert {"modeling_chatglm.py", "configuration_chatglm.py"} <= {p.name for p in chatglm_dir.iterdir()}
    # Without --trust-remote-code: one line naming it, status 2, no run folder.
    proc = subprocess.run([sys.executable, "-m", "medwb", "bench", "--model", str(chatglm_dir), "--run-dir",
                           str(tmp_path / "bench")], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**_without_consent(), "MEDWB_RUNS": str(tmp_path / "runs")})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "--trust-remote-code" in proc.stderr and "modeling_" in proc.stderr
    assert not any(tmp_path.iterdir())
    # The same check wherever a folder is given (evaluation, fidelity, apps: resolve_model).
    monkeypatch.delenv(architectures.TRUST_ENV, raising=False)
    with pytest.raises(MedwbError, match="--trust-remote-code"):
        resolve_model(str(chatglm_dir))
    # doctor: what each route would do with the consent, and that it is missing; then given.
    rows = {}
    for consent in (False, True):
        if consent:
            monkeypatch.setenv(architectures.TRUST_ENV, "1")  # what --trust-remote-code sets
        rows[consent] = {r["variant"]: r for r in doctor.routes(str(chatglm_dir))["routes"]}
    assert architectures.trust_kwargs() == {"trust_remote_code": True}
    monkeypatch.delenv(architectures.TRUST_ENV)
    assert architectures.trust_kwargs() == {} and resolve_model(str(chatglm_dir), consent=False) == chatglm_dir
    for name in ("bigdl:sym_int4", "llama.cpp:q4_0"):
        assert not rows[False][name]["takes"] and "needs --trust-remote-code" in rows[False][name]["why"]
        assert rows[True][name]["takes"]
    for name in ("pytorch:fp32", "openvino-genai:int4/bf16", "bigdl-cli:int4"):  # refused with the reason either way
        assert not rows[True][name]["takes"] and rows[True][name]["why"] == rows[False][name]["why"]
    assert "has 5.5" in rows[True]["pytorch:fp32"]["why"]
    # No PyTorch FP32 here: the F32 GGUF of the same weights stands for it, run first by default
    # (tests/test_families.py checks it decodes as the folder's own code does).
    from medwb.backends import registry
    from medwb.bench.config import load_config, validate
    monkeypatch.setenv(architectures.TRUST_ENV, "1")
    assert registry.reference_for(chatglm_dir) == {"backend": "llama.cpp", "precision": "f32"}
    assert registry.reference_for(random_weights.tiny("llama", log=lambda *_: None)) is registry.REFERENCE
    assert validate(load_config(model=str(chatglm_dir)))["variants"][0] == registry.reference_for(chatglm_dir)
    monkeypatch.delenv(architectures.TRUST_ENV)
    # Every command that takes a model takes the consent the refusal asks for.
    from medwb.cli import parser
    for argv in (["bench"], ["eval"], ["fidelity"], ["doctor"], ["app"], ["serve"], ["overhead"], ["app-load"],
                 ["feedback-simulate", "--db", "x.sqlite"]):
        assert parser().parse_args(argv + ["--trust-remote-code"]).trust_remote_code, argv


_REMOTE_CHILD = r"""
import json, sys, torch, importlib
package, folder, ids, attention = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
# "hidden": compare the last hidden state, not the logits (an output layer the library
# quantizes only when it optimizes: Baichuan2's NormHead)
hidden = sys.argv[5:] == ["hidden"]
from transformers import AutoModelForCausalLM
x = torch.tensor([ids])
with torch.inference_mode():  # the folder's own code on this environment's transformers, FP32
    ref = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, torch_dtype=torch.float32)
    out = ref.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, min_new_tokens=12,
                       do_sample=False, pad_token_id=2)
res = {"tokens": out[0, len(ids):].tolist(), "attention": []}
Low = importlib.import_module(package + ".transformers").AutoModelForCausalLM
seq, logits = torch.tensor([[(i * 37) % 1000 + 5 for i in range(48)]]), {}
for fused in (True, False):  # the library's ChatGLM kernels, then the folder's attention, same int8 weights
    m = Low.from_pretrained(folder, load_in_low_bit="sym_int8", optimize_model=fused, torch_dtype=torch.float32,
                            trust_remote_code=True)
    f = m.get_submodule(attention).forward
    res["attention"].append(getattr(f, "__func__", f).__module__)
    with torch.inference_mode():
        def last(step):
            return step.hidden_states[-1][0, -1] if hidden else step.logits[0, -1]
        step = m(input_ids=seq[:, :40], position_ids=torch.arange(40)[None], use_cache=True,
                 output_hidden_states=hidden)
        rows, past = [last(step)], step.past_key_values
        for i in range(40, 48):
            step = m(input_ids=seq[:, i:i + 1], position_ids=torch.tensor([[i]]), past_key_values=past,
                     use_cache=True, output_hidden_states=hidden)
            rows.append(last(step)); past = step.past_key_values
    logits[fused] = torch.stack(rows)
res["max_diff"] = (logits[True] - logits[False]).abs().max().item()
res["scale"] = logits[False].abs().max().item()
print(json.dumps(res))
"""
_GGUF_CHILD = r"""
import json, sys, llama_cpp
from medwb.sysinfo import default_threads  # the worker's share under make test
m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=default_threads(), verbose=False)
m.eval(json.loads(sys.argv[2])); out = []
for _ in range(12):
    out.append(m.sample(temp=0.0)); m.eval([out[-1]])
print(json.dumps(out))
"""


@pytest.mark.slow
def test_the_chatglm_routes_agree_with_the_folders_own_code(chatglm_dir, tmp_path):
    """The folder's code (transformers 4.31 and 4.47), bigdl-llm's and ipex-llm's fused ChatGLM2/3
    kernels (prefill and cached decode, against the folder's attention on the same int8 weights),
    and llama.cpp's ChatGLM graph on the F32 GGUF (whose floor reads what the registry counts):
    the same greedy tokens; then a benchmark with --trust-remote-code runs the bigdl route."""
    from medwb import envs
    from medwb.backends.pytorch import load_tokenizer
    from medwb.backends.toolchain import gguf_export
    ids = load_tokenizer(chatglm_dir).encode("患者发热三天，咳嗽。")
    tokens = {}
    for env, package in (("bigdl", "bigdl.llm"), ("ipex", "ipex_llm")):
        proc = subprocess.run([str(envs.require(env)), "-c", _REMOTE_CHILD, package, str(chatglm_dir), json.dumps(ids),
                               "transformer.encoder.layers.0.self_attention"],
                              cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        assert got["attention"][0].startswith(package.split(".")[0] + ".") and "modeling_chatglm" in got["attention"][1]
        assert got["max_diff"] <= 1e-4 * got["scale"], (env, got)
        tokens[env] = got["tokens"]
    gguf = gguf_export.convert(chatglm_dir, tmp_path / "gguf")
    proc = subprocess.run([str(envs.require("llamacpp")), "-c", _GGUF_CHILD, str(tmp_path / "gguf" / gguf_export.MODEL_FILE),
                           json.dumps(ids)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tokens["llama.cpp f32"] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tokens["bigdl"] == tokens["ipex"] == tokens["llama.cpp f32"], tokens
    shape = architectures.shape(json.loads((chatglm_dir / "config.json").read_text()))
    assert gguf["precision"] == "f32" and gguf["weights_read_bytes"] == pytest.approx(4 * shape.read_per_token,
                                                                                       rel=0.01)
    # The benchmark's path: consent from the flag into the bigdl env's conversion and probe
    # (the low-bit folder keeps the code), and a floor of int8 blocks plus one FP32 row of
    # the input table (ChatGLM names it embedding.word_embeddings).
    _bench_with_consent(chatglm_dir, "bigdl:sym_int8", shape, tmp_path / "run")


def _bench_with_consent(folder: Path, variant: str, shape, run: Path) -> None:
    """`medwb bench --trust-remote-code` on one variant beside the family's FP32 reference
    (llama.cpp's F32 GGUF), from a shell without the consent: a record with a speed, a floor
    of int8 blocks plus one FP32 row of the input table, and agreement with the reference."""
    proc = subprocess.run([sys.executable, "-m", "medwb", "bench", "--trust-remote-code", "--no-progress",
                           "--model", str(folder), "--variants", f"llama.cpp:f32,{variant}", "--token-pairs", "16-8",
                           "--trials", "1", "--quality-cases", "2", "--run-dir", str(run)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200, env=_without_consent())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    rec = next(r for r in map(json.loads, (run / "records" / "bench.jsonl").read_text().splitlines())
               if r["record_type"] == "variant" and r["variant"] == variant)
    assert not rec.get("error") and rec["tpot_ms"] > 0, rec.get("error")
    assert 1.0 < rec["weights_read_bytes"] / shape.read_per_token < 1.2
    assert rec["agreement_vs_fp32"]["n_prompts"] > 0


# Baichuan2 (#33): a remote-code folder whose tokenizer is SentencePiece (tokenizer.model and
# the folder's own class), whose output layer normalises its rows (NormHead) and whose chat
# turns are marked by two reserved pieces (generation_config.json's user/assistant token ids).
# The tiny checkpoint carries the Baichuan2-7B-layout code written in
# medwb/models/remote_code/baichuan, at the 7B's depth (llama.cpp picks its graph by it).
@pytest.fixture(scope="module")
def baichuan_dir():
    return random_weights.tiny("baichuan", log=lambda *_: None)


def _published_tokenizer(folder: Path, out: Path) -> Path:
    """A copy of ``folder`` whose tokenizer code loads the SentencePiece model after the base
    class's __init__, as Baichuan2's published tokenization_baichuan.py does."""
    import shutil
    shutil.copytree(folder, out)
    code = out / "tokenization_baichuan.py"
    text = code.read_text(encoding="utf-8")
    load = "        self.sp_model = spm.SentencePieceProcessor(model_file=vocab_file)\n"
    text = text.replace(load, "").replace("**kwargs)\n\n    @property", "**kwargs)\n" + load + "\n    @property", 1)
    assert text.count("self.sp_model = ") == 1 and text.index("super().__init__(") < text.index("self.sp_model = ")
    code.write_text(text, encoding="utf-8")
    return out


def test_a_baichuan2_folder_is_read_as_its_own_code_reads_it(baichuan_dir, tmp_path, monkeypatch):
    import sentencepiece as spm
    from safetensors import safe_open
    from medwb import doctor
    from medwb.backends.pytorch import load_tokenizer
    from medwb.models import chat
    cfg = json.loads((baichuan_dir / "config.json").read_text())
    with safe_open(str(baichuan_dir / "model.safetensors"), "pt") as f:
        written = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert written == architectures.shape(cfg).parameters
    # The chat format Baichuan2's folders carry no template for: its two markers, tokenized
    # to the ids its generation_config.json names, around the user's text as SentencePiece
    # encodes it (no BOS, no leading space).
    monkeypatch.setenv(architectures.TRUST_ENV, "1")
    gen = json.loads((baichuan_dir / "generation_config.json").read_text())
    text = "患者发热三天，咳嗽 38.5℃。"
    prompt = chat.renderer(chat.template_of(baichuan_dir))(text)
    sp = spm.SentencePieceProcessor(model_file=str(baichuan_dir / "tokenizer.model"))
    expected = [gen["user_token_id"]] + sp.encode(text) + [gen["assistant_token_id"]]
    own = load_tokenizer(baichuan_dir)
    assert type(own).__name__ == "BaichuanTokenizer" and own.encode(prompt) == expected
    # Baichuan2's published tokenizer code fails on this transformers (5.5): MedWB reads
    # tokenizer.model itself, to the same ids and text.
    published = _published_tokenizer(baichuan_dir, tmp_path / "published")
    from transformers import AutoTokenizer
    with pytest.raises((AttributeError, TypeError)):  # sp_model used before it is set
        AutoTokenizer.from_pretrained(published, trust_remote_code=True)
    read = load_tokenizer(published)
    assert type(read).__name__ == "SentencePieceTokenizer" and read.encode(prompt) == expected
    assert read.decode(expected) == own.decode(expected) == prompt
    # Routes: ipex-llm and llama.cpp (at the 7B's depth), the rest refused with the reason.
    rows = {r["variant"]: r for r in doctor.routes(str(baichuan_dir))["routes"]}
    assert rows["ipex-llm:sym_int4"]["takes"] and rows["llama.cpp:q4_0"]["takes"]
    assert not rows["bigdl:sym_int4"]["takes"] and "load_low_bit" in rows["bigdl:sym_int4"]["why"]
    assert not rows["pytorch:fp32"]["takes"] and "4.34" in rows["pytorch:fp32"]["why"]
    shallow = tmp_path / "shallow"
    shallow.mkdir()
    (shallow / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    assert "2 layers would decode with none" in architectures.route_problem(shallow, "llama.cpp")
    assert architectures.route_problem(baichuan_dir, "llama.cpp") is None


_GGUF_LOGITS = r"""
import json, sys, llama_cpp
from medwb.sysinfo import default_threads  # the worker's share under make test
m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=default_threads(), verbose=False)
ids = m.tokenize(sys.argv[2].encode("utf-8"), add_bos=True, special=True)
m.eval(ids); out = []
for _ in range(12):
    out.append(m.sample(temp=0.0)); m.eval([out[-1]])
print(json.dumps({"ids": ids, "tokens": out}))
"""


@pytest.mark.slow
def test_the_baichuan2_routes_agree_with_the_folders_own_code(baichuan_dir, tmp_path):
    """The folder's code in the ipex env (FP32) and ipex-llm's Baichuan2 handling (low-bit,
    against the folder's own modules on the same int8 weights), llama.cpp's graph on the F32
    GGUF MedWB converts (NormHead rows normalised, chat markers and SentencePiece settings
    kept): the same prompt ids and greedy tokens; then a benchmark with --trust-remote-code
    runs the ipex-llm route from its saved low-bit folder."""
    import numpy as np
    from medwb import envs
    from medwb.backends.pytorch import load_tokenizer
    from medwb.backends.toolchain import gguf_export
    from medwb.models import chat
    import os
    os.environ[architectures.TRUST_ENV] = "1"
    try:
        prompt = chat.renderer(chat.template_of(baichuan_dir))("患者发热三天，咳嗽。")
        ids = load_tokenizer(baichuan_dir).encode(prompt)
    finally:
        os.environ.pop(architectures.TRUST_ENV)
    proc = subprocess.run([str(envs.require("ipex")), "-c", _REMOTE_CHILD, "ipex_llm", str(baichuan_dir),
                           json.dumps(ids), "model.layers.0.mlp", "hidden"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["attention"][0].startswith("ipex_llm.") and "modeling_baichuan" in got["attention"][1]
    assert got["max_diff"] <= 1e-4 * got["scale"], got
    gguf = gguf_export.convert(baichuan_dir, tmp_path / "gguf")
    gguf_file = tmp_path / "gguf" / gguf_export.MODEL_FILE
    proc = subprocess.run([str(envs.require("llamacpp")), "-c", _GGUF_LOGITS, str(gguf_file), prompt],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cpp = json.loads(proc.stdout.strip().splitlines()[-1])
    assert cpp["ids"] == ids and cpp["tokens"] == got["tokens"], (ids, cpp, got["tokens"])
    import gguf as gguf_py
    output = next(t for t in gguf_py.GGUFReader(str(gguf_file)).tensors if t.name == "output.weight")
    assert np.allclose(np.linalg.norm(np.asarray(output.data, dtype=np.float32), axis=-1), 1.0, atol=1e-5)
    shape = architectures.shape(json.loads((baichuan_dir / "config.json").read_text()))
    assert gguf["weights_read_bytes"] == pytest.approx(4 * shape.read_per_token, rel=0.01)
    _bench_with_consent(baichuan_dir, "ipex-llm:sym_int8", shape, tmp_path / "run")
