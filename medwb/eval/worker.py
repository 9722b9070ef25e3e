"""Answer evaluation prompts with one variant: ``python -m medwb.eval.worker SPEC.json``.

Runs in the environment the backend needs (bigdl in ``.venvs/bigdl``), one process per
variant as in the benchmark: a crash ends one variant, not the run. Every answer is
appended to the prediction cache (``spec["out"]``) as one JSON line, flushed and synced
as soon as it exists, so a crash or a kill loses only the sample being generated and a
rerun resumes after the last finished one.

Spec keys: backend, model_path, precision, threads, kv_cache_precision, kernel_build
("match": the build matching this CPU), out, samples ([{key, prompt, max_new_tokens}]),
and any artifact keys the backend's ``prepare`` added.
"""
from __future__ import annotations

import json
import os
import sys
import time

from medwb import jsonl
from medwb.backends.protocol import ProbeSpec

# Part of the answer cache's key: bump it when a change alters the text a backend returns
# for the same prompt (decoding, the repair of llm-cli's output), so old answers are not reused.
ANSWERS_VERSION = 2


def answer(spec: ProbeSpec) -> dict:
    from medwb.backends.loader import load_in_child, prepare_child
    entry, kernel_build = prepare_child(spec)
    runtime, load_s = None, 0.0
    if entry.serves:  # a one-shot tool (llm-cli) is run per prompt below instead
        loaded = load_in_child(spec)
        runtime, load_s = loaded.runtime, loaded.import_s + loaded.load_s
    spec = {**spec, "kernel_build": kernel_build}
    done = 0
    # Fault injection for the tests: die after this many answers, as a crash would.
    fail_after = int(os.environ.get("MEDWB_FAULT_EVAL_AFTER", "-1"))
    for sample in spec["samples"]:
        if done == fail_after:
            raise RuntimeError(f"injected fault after {done} answers (MEDWB_FAULT_EVAL_AFTER)")
        t0 = time.perf_counter()
        if runtime is not None:
            ids = runtime.generate_ids(runtime.encode(sample["prompt"]), sample["max_new_tokens"])
            text, n_new = runtime.decode(ids), len(ids)
        else:  # a one-shot tool (llm-cli): it runs itself, one prompt per call
            result = entry.probe({**spec, "prompts": [sample["prompt"]],
                                  "prompt_budgets": [sample["max_new_tokens"]]})
            if "error" in result:
                raise RuntimeError(result["error"])
            text, n_new = result["texts"][0], len(result["output_ids"][0])
        jsonl.append(spec["out"], [{"key": sample["key"], "output": text, "n_new_tokens": n_new,
                                    "seconds": round(time.perf_counter() - t0, 3)}])
        done += 1
    return {"answered": done, "load_s": round(load_s, 3),
            "describe": runtime.describe() if runtime is not None else {"backend": entry.name},
            "kernel_build": kernel_build}


if __name__ == "__main__":
    from medwb.child import write_result
    with open(sys.argv[1], encoding="utf-8") as fh:
        write_result(answer(json.load(fh)))
