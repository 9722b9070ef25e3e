"""The embedded demo model: shape every route accepts, quality, both envs, cache."""
import copy
import json
import subprocess
import sys

import pytest

from medwb import corpus, demo_model, prompts
from medwb.backends.pytorch import PyTorchBackend
from medwb.errors import MedwbError

from conftest import run_python


def test_shape_is_one_every_route_takes(demo_model_dir):
    cfg = json.loads((demo_model_dir / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["num_hidden_layers"] in (26, 32)
    assert cfg["num_key_value_heads"] == cfg["num_attention_heads"]
    assert cfg["hidden_size"] % 64 == 0 and cfg["intermediate_size"] % 64 == 0
    demo_model.check_shape(cfg)  # llm-convert's multiple_of rule included
    for name in ("model.safetensors", "pytorch_model.bin"):
        assert (demo_model_dir / name).stat().st_size > 0


def test_pytorch_bin_holds_the_same_weights_as_safetensors(demo_model_dir):
    import torch
    from safetensors.torch import load_file
    st = load_file(demo_model_dir / "model.safetensors")
    pt = torch.load(demo_model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert set(st) <= set(pt)
    assert all(torch.equal(st[k], pt[k]) for k in st)


def test_quality_meets_the_targets_on_heldout_cases(demo_model_dir):
    """Re-measured here, not read from the manifest."""
    q = demo_model.evaluate_model(demo_model_dir, progress=False)
    print(demo_model.format_quality(q))
    assert q["discharge_sections_rate"] >= 0.9
    assert q["diagnosis_top3_rate"] >= 0.5


def test_bigdl_env_loads_the_model_and_agrees_with_main_env(demo_model_dir):
    """transformers 4.31 in the bigdl env must give the same greedy tokens as 5.x here."""
    record = corpus.load_records("diagnosis", limit=1)[0]
    prompt = prompts.render_chat([{"role": "user", "content": record["input"]}])
    backend = PyTorchBackend.load(demo_model_dir)
    enc = backend.tokenizer([prompt], return_tensors="pt")
    main_ids = backend.model.generate(**enc, max_new_tokens=24, do_sample=False)[0].tolist()
    code = f"""
import json, torch, medwb
from transformers import AutoModelForCausalLM, AutoTokenizer
t = AutoTokenizer.from_pretrained({str(demo_model_dir)!r})
m = AutoModelForCausalLM.from_pretrained({str(demo_model_dir)!r}, torch_dtype=torch.float32).eval()
enc = t([{prompt!r}], return_tensors="pt")
out = m.generate(**enc, max_new_tokens=24, do_sample=False)
print(json.dumps(out[0].tolist()))
"""
    assert run_python("bigdl", code) == main_ids


# --- cache ---------------------------------------------------------------------------
TINY = copy.deepcopy(demo_model.RECIPE)
TINY["name"] = "medwb-demo-llama-test-tiny"
TINY["corpus"]["train_cases_per_disease"] = 2
TINY["train"]["steps"] = 2
TINY["eval"] = {"cases": 2, "max_new_tokens": {"diagnosis": 4, "discharge": 4}}


@pytest.fixture()
def tiny_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDWB_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_cache_is_reused_and_a_corrupt_cache_is_rebuilt(tiny_cache):
    logs = []
    path = demo_model.ensure(recipe=TINY, progress=False, log=logs.append)
    assert demo_model.verify(path, TINY) is None
    logs.clear()
    assert demo_model.ensure(recipe=TINY, progress=False, log=logs.append) == path
    assert logs == []  # reused: nothing built
    with open(path / "model.safetensors", "r+b") as f:  # flip bytes in the weights
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    assert "checksum" in demo_model.verify(path, TINY)
    demo_model.ensure(recipe=TINY, progress=False, log=logs.append)
    assert any("not usable" in line and "rebuilding" in line for line in logs)
    assert demo_model.verify(path, TINY) is None
    assert not list(path.parent.glob(".*tmp-*"))  # no half-written directory left


def test_recipe_change_gives_another_cache_entry():
    other = copy.deepcopy(demo_model.RECIPE)
    other["train"]["steps"] += 1
    assert demo_model.recipe_hash(other) != demo_model.recipe_hash()


def test_bad_shapes_are_rejected_before_training():
    bad = copy.deepcopy(demo_model.RECIPE["model"])
    bad.update(num_hidden_layers=12, num_key_value_heads=1, intermediate_size=200)
    with pytest.raises(MedwbError) as err:
        demo_model.check_shape(bad)
    for part in ("26, 32", "num_key_value_heads", "multiples of 64"):
        assert part in str(err.value)


def test_cli_prints_quality_figures_and_copies_with_out(demo_model_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "medwb", "demo-model", "--out", str(tmp_path / "m")],
                         capture_output=True, text=True, check=True)
    assert "true diagnosis among the first three named" in out.stdout
    assert "all five section headings present" in out.stdout
    assert demo_model.verify(tmp_path / "m") is None
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    bad = subprocess.run([sys.executable, "-m", "medwb", "demo-model", "--out", str(tmp_path / "other")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and str(tmp_path / "other") in bad.stderr
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"
