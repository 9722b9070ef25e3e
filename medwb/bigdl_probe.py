"""Measure one BigDL variant in a fresh process (bigdl env): run as
``python -m medwb.bigdl_probe SPEC.json``; prints one JSON line.

A fresh process per variant keeps peak-RSS figures clean (the FP32-sized peak of
quantizing on load would otherwise hide the low-bit folder's smaller one) and lets a
kernel-build override take effect before bigdl loads its libraries.
"""
from __future__ import annotations

import json
import sys
import time


def probe(spec: dict) -> dict:
    import medwb  # noqa: F401  (offline switches)
    from medwb import bigdl_kernels, measure

    if spec.get("kernel_build"):
        bigdl_kernels.use_build(spec["kernel_build"])
    import torch

    from medwb.backends.bigdl import BigDLBackend
    from medwb.backends.pytorch import PyTorchBackend

    started = time.perf_counter()
    if spec["low_bit"] == "fp32":
        backend = PyTorchBackend.load(spec["model_path"], "float32", spec["threads"])
    else:
        backend = BigDLBackend.load(spec["model_path"], spec["low_bit"], spec["threads"])
    result = {"load_s": round(time.perf_counter() - started, 3),
              "peak_rss_mb_load": round(measure.peak_rss_mb(), 1), "describe": backend.describe()}
    if spec.get("save_to"):
        backend.save_low_bit(spec["save_to"])
        result["saved_bytes"] = measure.dir_size_bytes(spec["save_to"])

    tok, model = backend.tokenizer, backend.model
    streamer = measure.TimingStreamer()
    enc = tok(spec["timing_prompt"], return_tensors="pt")
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=2, do_sample=False)  # warm-up, excluded
        streamer.begin()
        model.generate(**enc, max_new_tokens=spec["max_new_tokens"], min_new_tokens=spec["max_new_tokens"],
                       do_sample=False, streamer=streamer)
    result.update(ttft_ms=round(streamer.ttft_ms, 2), tpot_ms=round(streamer.tpot_ms, 3),
                  n_prompt_tokens=int(enc["input_ids"].shape[1]), n_new_tokens=len(streamer.times))

    outputs, last_logits = [], []
    with torch.inference_mode():
        for prompt in spec["prompts"]:
            enc = tok(prompt, return_tensors="pt")
            last_logits.append(model(**enc).logits[0, -1].float().tolist())
            out = model.generate(**enc, max_new_tokens=spec["max_new_tokens"], do_sample=False)
            outputs.append(out[0, enc["input_ids"].shape[1]:].tolist())
    result.update(output_ids=outputs, last_logits=last_logits,
                  texts=[tok.decode(o, skip_special_tokens=True) for o in outputs],
                  peak_rss_mb=round(measure.peak_rss_mb(), 1),
                  kernel_builds=bigdl_kernels.loaded_builds())
    return result


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    print(json.dumps(probe(spec), ensure_ascii=False))
