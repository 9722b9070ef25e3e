"""llama.cpp as the peer variant: a faithful GGUF, a floor from the file's own tensor table,
an error record (never a crash) where it could not be built, and the same-bits comparison."""
import json
import os
import subprocess
import sys

import pytest

from medwb.backends import llamacpp
from medwb.backends.toolchain import llamacpp_setup
from medwb.bench import report
from medwb.jsonl import read as read_records


pytestmark = pytest.mark.slow  # loads or converts models, runs notebooks or servers

def _bench(tmp_path, variants, env=None, pairs=(16, 8), quality_cases=1):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "medwb", "bench", "--no-progress", "--variants", variants,
                           "--token-pairs", f"{pairs[0]}-{pairs[1]}", "--trials", "1",
                           "--quality-cases", str(quality_cases), "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {r["variant"]: r for r in read_records(run / "records" / "bench.jsonl") if r["record_type"] == "variant"}


def test_llamacpp_on_the_demo_model_matches_fp32_and_its_floor_counts_each_tensor(tmp_path):
    recs = _bench(tmp_path, "pytorch:fp32,llama.cpp:f32,llama.cpp:q4_0")
    why = llamacpp.unavailable()
    if why:  # a machine that could not build it: the records say why, and so does the skip
        assert recs["llama.cpp:q4_0"]["error"] == why and not recs["pytorch:fp32"].get("error")
        pytest.skip(f"llama.cpp is not built on this machine: {why}")
    f32, q4 = recs["llama.cpp:f32"], recs["llama.cpp:q4_0"]
    for r in (f32, q4):
        assert not r.get("error"), r.get("error")
        assert r["tpot_ms"] > 0 and r["ttft_ms"] > 0 and r["peak_rss_mb"] > 0 and len(r["output_md5"]) == 32
        assert r["peer"] is True and r["route"] == "llama.cpp" and r["kernels"].startswith("llama.cpp (")
        assert r["floor_basis"] == "the artifact's tensor table"
        assert 0 < r["weights_read_bytes"] < r["size_bytes"]  # the embedding table is not read per token
    # The converted F32 file decodes exactly as PyTorch FP32 does (same greedy tokens).
    assert f32["agreement_vs_fp32"]["exact_match_rate"] == 1.0
    assert f32["weight_bits"] == 32 and q4["weight_bits"] == 4
    assert q4["size_bytes"] < f32["size_bytes"] / 3


def test_a_benchmark_sizes_llamacpps_context_as_its_tools_do_and_an_app_keeps_the_models(tmp_path):
    """llama.cpp allocates its KV cache for the whole context at load: a bench probe asks for
    4096 tokens (llama.cpp's default) or its longest pair, never more than the model has; an
    app worker (no token pairs) gets the model's context."""
    import shutil
    from pathlib import Path

    recs = _bench(tmp_path, "llama.cpp:q4_0")
    if llamacpp.unavailable():
        pytest.skip(f"llama.cpp is not built on this machine: {llamacpp.unavailable()}")
    assert not recs["llama.cpp:q4_0"].get("error")
    from medwb.backends.variants import artifacts_dir
    built = artifacts_dir(Path(recs["llama.cpp:q4_0"]["model"])) / "gguf-q4_0" / "model.gguf"  # this bench's
    folder = tmp_path / "long-context"
    shutil.copytree(built.parent, folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 32768}))
    code = ("import json, sys; from medwb.backends.llamacpp import LlamaCpp; "
            "print(json.dumps([LlamaCpp().load({'model_path': sys.argv[1], 'precision': 'q4_0', 'threads': 1, "
            "**({'token_pairs': p} if p else {})}).llm.n_ctx() for p in ([[16, 8]], [[5000, 100], [32, 64]], None)]))")
    from medwb import envs
    proc = subprocess.run([str(envs.python_of("llamacpp")), "-c", code, str(folder)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    default, longest, app = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (default, app) == (4096, 32768) and 5100 <= longest < 5100 + 256  # llama.cpp rounds up to 256
    assert cfg["max_position_embeddings"] < 4096  # the demo model's own: a bench never asks beyond it
    assert recs["llama.cpp:q4_0"]["tpot_ms"] > 0


def test_a_machine_without_llamacpp_gets_an_error_record_and_the_run_goes_on(tmp_path):
    fake = tmp_path / "llamacpp"
    (fake / "bin").mkdir(parents=True)
    note = "llama.cpp could not be built on this machine (no C compiler); see build.log"
    (fake / llamacpp_setup.UNAVAILABLE).write_text(note + "\n", encoding="utf-8")
    recs = _bench(tmp_path, "pytorch:fp32,llama.cpp:q4_0", env={"MEDWB_LLAMACPP_PYTHON": str(fake / "bin" / "python")},
                  pairs=(8, 4), quality_cases=0)
    assert recs["llama.cpp:q4_0"]["error"] == note
    assert not recs["pytorch:fp32"].get("error") and recs["pytorch:fp32"]["tpot_ms"] > 0


def test_a_failed_build_is_written_down_and_setup_goes_on(tmp_path, capsys):
    env = tmp_path / "env"
    assert llamacpp_setup.main([str(env), str(tmp_path / "missing.lock")]) == 0
    note = (env / llamacpp_setup.UNAVAILABLE).read_text(encoding="utf-8")
    assert note.startswith("llama.cpp could not be built on this machine (") and "missing.lock" in note
    assert "WARNING" in capsys.readouterr().err


def _rec(variant, bits, tpot, floor, peer=False, tokens=(32, 64)):
    return {"record_type": "variant", "variant": variant, "weight_bits": bits, "tpot_ms": tpot,
            "decode_floor_ms": floor, "peer": peer, "input_tokens": tokens[0], "output_tokens": tokens[1]}


def test_the_peer_comparison_takes_the_fastest_of_each_side_at_the_same_bits():
    records = [_rec("openvino-genai:int4/bf16", 4, 30.0, 20.0), _rec("bigdl:sym_int4", 4, 50.0, 20.0),
               _rec("llama.cpp:q4_0", 4, 45.0, 22.5, peer=True), _rec("llama.cpp:q4_k_m", 4, 48.0, 24.0, peer=True),
               _rec("openvino-genai:int8/bf16", 8, 40.0, 36.0), _rec("llama.cpp:q8_0", 8, 32.0, 36.0, peer=True),
               _rec("pytorch:fp32", 32, 200.0, 150.0),  # no peer at 32 bits: no row
               {**_rec("bigdl:sym_int8", 8, 1.0, 1.0), "error": "crashed"}]  # errors never win
    peers = report.peer_comparison(records)
    rows = {r["bits"]: r for r in peers.to_dict("records")}
    assert set(rows) == {4, 8}
    assert rows[4]["route_variant"] == "openvino-genai:int4/bf16" and rows[4]["peer_variant"] == "llama.cpp:q4_0"
    assert rows[4]["peer_over_route"] == 1.5 and rows[4]["route_x_floor"] == 1.5 and rows[4]["peer_x_floor"] == 2.0
    assert rows[8]["peer_over_route"] == 0.8
    text = report.peer_text(peers)
    assert "the route 1.50x faster" in text and "llama.cpp 1.25x faster" in text
    assert "no comparison" in report.peer_text(report.peer_comparison(records[:2]))
    json.dumps(peers.to_dict("records"))  # the report can store it


def test_a_recommended_peer_is_named_as_such():
    import pandas as pd
    ranked = pd.DataFrame([{"variant": "llama.cpp:q4_0", "qualifies": True, "accurate": True, "tpot_ms": 1.0,
                            "tpot_side_by_side": 2.0, "side_by_side_basis": "measured", "peak_rss_MB": 80.0,
                            "fit_in_budget": 200, "task_score": None}])
    text = report.recommendation_text(ranked, 100, 16, side_by_side=3)
    assert "deploy llama.cpp:q4_0 (the peer users would pick instead, not one of the two routes)" in text
    ranked.loc[0, "variant"] = "openvino-genai:int4/bf16"
    assert "not one of the two routes" not in report.recommendation_text(ranked, 100, 16, side_by_side=3)


def test_llamacpp_serves_as_one_of_the_apps_models(tmp_path):
    import threading

    from medwb.apps import workers
    from medwb.tasks import corpus, prompts
    if llamacpp.unavailable():
        pytest.skip(f"llama.cpp is not built on this machine: {llamacpp.unavailable()}")
    spec = workers.parse_model("llama.cpp:q4_0", 0)
    spec["model_path"] = str(workers.resolve_artifact(spec))  # a folder: model.gguf and the context's config
    worker = workers.ModelWorker(spec, threads=1, log_dir=tmp_path)
    worker.start()
    try:
        assert worker.wait_ready(300), worker.error
        done, events = threading.Event(), []

        def on_event(kind, msg):
            events.append(kind)
            if kind == "done":
                events.append(msg)
                done.set()
        worker.submit(1, corpus.heldout_cases("standard")[0].fields(), prompts.DIAGNOSIS_PROMPT, 200, on_event)
        assert done.wait(300)
        result = events[-1]
        assert result["status"] == "ok" and result["new_tokens"] > 0 and result["ttft_ms"] > 0, result
        assert result["text"].startswith(prompts.PRIMARY_HEADING) and "text" in events  # streamed, then done
    finally:
        worker.stop()


def test_an_archived_library_is_recommended_only_when_clearly_faster():
    """ipex-llm is archived upstream (no security fixes): within report.MAINTAINED_MARGIN of a
    maintained variant, the maintained one is recommended, saying why."""
    import pandas as pd
    row = {"qualifies": True, "accurate": True, "tpot_side_by_side": 2.0, "side_by_side_basis": "measured",
           "peak_rss_MB": 80.0, "fit_in_budget": 200, "task_score": None}
    ranked = pd.DataFrame([{**row, "variant": "ipex-llm:sym_int4", "tpot_ms": 1.00},
                           {**row, "variant": "openvino-genai:int4/bf16", "tpot_ms": 1.05}])
    text = report.recommendation_text(ranked, 100, 16, side_by_side=3)
    assert "deploy openvino-genai:int4/bf16" in text and "Passed over: ipex-llm:sym_int4" in text
    assert "archived" in text
    ranked.loc[1, "tpot_ms"] = 1.5
    text = report.recommendation_text(ranked, 100, 16, side_by_side=3)
    assert "deploy ipex-llm:sym_int4" in text and "Note: ipex-llm 2.2.0" in text


_TOKENIZE = r"""
import json, sys, llama_cpp
m = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False, vocab_only=True)
print(json.dumps(m.tokenize(sys.argv[2].encode("utf-8"), add_bos=True)))
"""


def test_a_sentencepiece_folder_converts_with_its_own_vocabulary(tmp_path):
    """A Llama 2 folder ships tokenizer.model (SentencePiece), which llama.cpp's converter reads
    with the sentencepiece package before any other tokenizer file. The main environment lacked
    it: a folder whose tokenizer is only tokenizer.model fell through to the converter's BPE
    path and stopped ("BPE pre-tokenizer was not recognized"). The GGUF's vocabulary must be
    the folder's: llama.cpp tokenizes a case as SentencePiece does."""
    import shutil
    import sentencepiece as spm
    from medwb import envs
    from medwb.backends.toolchain import gguf_export
    from medwb.models import random_weights
    folder = tmp_path / "llama2-style"
    shutil.copytree(random_weights.tiny("llama", log=lambda *_: None), folder)
    for f in random_weights.TOKENIZER_FILES:
        (folder / f).unlink(missing_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "data", "heldout", "diagnosis.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["input"] for line in f][:200]
    (tmp_path / "corpus.txt").write_text("\n".join(texts), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=2000, model_type="bpe", character_coverage=0.9995, byte_fallback=True,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   # as Llama 2's tokenizer.model: no NFKC folding of full-width
                                   # punctuation (llama.cpp applies none), whitespace kept
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)
    (folder / "tokenizer.vocab").unlink()
    gguf_export.convert(folder, tmp_path / "gguf")
    text = texts[-1][:200]
    proc = subprocess.run([str(envs.require("llamacpp")), "-c", _TOKENIZE, str(tmp_path / "gguf" / gguf_export.MODEL_FILE),
                           text], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = [1] + spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).encode(text)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == expected
