"""The quantized route, end to end, for notebook 01 (bigdl env).

Validates every parameter before anything runs, then measures each variant in a fresh
process (``medwb.bench.probe``) and writes records in the shared format that the
comparison notebook reads: one JSON object per line in ``<run_dir>/records/bigdl.jsonl``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from medwb import sysinfo
from medwb.backends.toolchain import bigdl_kernels, llm_cli
from medwb.tasks import corpus, prompts
from medwb.backends import registry
from medwb.backends.bigdl import check_low_bit
from medwb.errors import MedwbError
from medwb.paths import checkpoint_bytes, check_model_dir, check_writable_dir
from medwb.bench.probe import against_reference, run_probe
from medwb.bench.records import table as records_table, variant_record
from medwb.clock import now


def check_parameters(model_path, model_family: str, low_bits, out_dir, threads) -> dict:
    """Reject bad input with one message naming the parameter, before anything is written."""
    model_dir = check_model_dir(model_path, "model_path")
    wrong_family = llm_cli.family_problem(model_dir, model_family)
    if wrong_family:
        raise MedwbError(wrong_family)
    if isinstance(low_bits, str) or not low_bits:
        raise MedwbError("low_bits must be a non-empty list, e.g. ['sym_int4', 'sym_int8']")
    for lb in low_bits:
        check_low_bit(lb, "low_bits")
    if not out_dir:
        raise MedwbError("out_dir is empty: give a folder for the converted models")
    check_writable_dir(out_dir, "out_dir")
    if not isinstance(threads, int) or threads < 1:
        raise MedwbError(f"threads must be a positive integer, got {threads!r}")
    return {"model_dir": model_dir}


def probe_spec(model_dir: Path, threads: int, n_prompts: int, max_new_tokens: int,
               timing_prompt: str | None = None) -> dict:
    """What every probe of one run shares: model, threads, held-out prompts, lengths."""
    ps = corpus.heldout_prompts(n_prompts)
    return {"model_path": str(model_dir), "threads": threads, "prompts": ps,
            "timing_prompt": timing_prompt or ps[0], "max_new_tokens": max_new_tokens}


def _bigdl(low_bit: str) -> dict:
    return {"backend": "bigdl", "precision": low_bit}


def make_record(route: str, precision: str, result: dict, reference: dict | None, **extra) -> dict:
    return variant_record("bigdl", route, precision, result, reference, **extra)


def api_route(model_path, low_bits, out_dir, threads: int, n_prompts: int = 8,
              max_new_tokens: int = 32, timing_prompt: str | None = None, log=print) -> list[dict]:
    """FP32 reference, then per low-bit type: quantize on load (and save_low_bit), then
    reload from the low-bit folder; each in its own process."""
    model_dir = check_model_dir(model_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = probe_spec(model_dir, threads, n_prompts, max_new_tokens, timing_prompt)
    size_fp32 = checkpoint_bytes(model_dir) or None

    def measure(lb, reference: dict | None) -> tuple[list[dict], dict]:
        if lb is registry.REFERENCE:
            log("FP32 reference (transformers 4.31) ...")
            result = run_probe({**base, **registry.REFERENCE})
            return [make_record("pytorch", "fp32", result, None, model_path=str(model_dir),
                                size_bytes=size_fp32, threads=threads)], result
        folder = out_dir / f"low_bit_{lb}"
        log(f"{lb}: quantize on load, save_low_bit -> {folder} ...")
        first = run_probe({**base, **_bigdl(lb), "save_to": str(folder)})
        records = [make_record("bigdl-api", lb, first, reference, model_path=str(model_dir),
                               source="original checkpoint", threads=threads, size_bytes=first.get("saved_bytes"))]
        if "error" in first:
            log(f"  failed: {first['error']}")
            return records, first
        log(f"{lb}: load_low_bit from {folder} ...")
        again = run_probe({**base, **_bigdl(lb), "model_path": str(folder)})
        rec = make_record("bigdl-api", lb, again, reference, model_path=str(folder),
                          source="low-bit folder", threads=threads, size_bytes=first.get("saved_bytes"))
        if "error" not in again:
            rec["roundtrip_identical_tokens"] = again["output_ids"] == first["output_ids"]
        return records + [rec], again

    return against_reference(registry.REFERENCE, list(low_bits), measure)


def kernel_comparison(model_path, low_bit: str, threads: int, build: str, n_prompts: int = 2,
                      max_new_tokens: int = 32) -> list[dict]:
    """The same low-bit variant with bigdl's own kernel choice and with ``build``, measured
    one after the other in this run."""
    base = {**probe_spec(check_model_dir(model_path), threads, n_prompts, max_new_tokens),
            **_bigdl(low_bit)}
    default = run_probe(base)
    chosen = run_probe({**base, "kernel_build": build})
    return [make_record("bigdl-api", low_bit, default, None, kernel_choice="bigdl default",
                        threads=threads, model_path=base["model_path"]),
            make_record("bigdl-api", low_bit, chosen, default, kernel_choice=f"override: {build}",
                        threads=threads, model_path=base["model_path"])]


def cli_route(model_path, model_family: str, out_dir, threads: int, prompt: str,
              n_predict: int = 48, kernel_build: str | None = None, log=print) -> tuple[list[dict], str | None]:
    """llm-convert to every precision the family allows, then llm-cli on each file.

    Returns (records, why_not): when the model cannot take this route, no record and the
    reason, so the notebook says why and carries on with the API route.
    """
    model_dir = check_model_dir(model_path)
    problems = llm_cli.cli_route_problems(model_dir, model_family)
    if problems:
        return [], "; ".join(problems)
    records = []
    for precision in llm_cli.PRECISIONS[model_family]:
        conv = llm_cli.convert(model_dir, out_dir, model_family, precision)
        log(f"$ {conv['command']}")
        for kb in dict.fromkeys([None, kernel_build]):
            load = sysinfo.check_load(log=log)
            cli = llm_cli.run_cli(conv["file"], model_family, prompt, threads, n_predict, kernel_build=kb)
            log(f"$ {cli['command'][:160]}...")
            t = cli["timings"]
            records.append({
                "record_type": "variant", "backend": "bigdl", "route": "bigdl-cli", "precision": precision,
                "model_path": str(model_dir), "file": conv["file"], "size_bytes": conv["bytes"],
                "convert_s": conv["seconds"], "threads": threads,
                "kernel_choice": f"override: {kb}" if kb else "bigdl default",
                "kernel_build": cli["kernel_build"], "load_s": t.get("load_time_ms", 0) / 1e3,
                "prompt_eval_ms_per_token": _per(t, "prompt_eval_time"),
                "tpot_ms": _per(t, "eval_time"), "n_prompt_tokens": t.get("prompt_eval_time_count"),
                "text": cli["text"], "convert_command": conv["command"], "cli_command": cli["command"],
                "output_md5": hashlib.md5(cli["text"].encode("utf-8")).hexdigest(),
                "machine_load": load, "created": now()})
    return records, None


def _per(timings: dict, name: str) -> float | None:
    ms, n = timings.get(f"{name}_ms"), timings.get(f"{name}_count")
    return round(ms / n, 3) if ms is not None and n else None


def table(records: list[dict]):
    """A readable table of the records (pandas)."""
    return records_table(records, ["route", "precision", "from", "kernel", "size_MB", "load_s", "load_peak_rss_MB",
                                   "ttft_ms", "tpot_ms", "exact_match", "prefix_agree", "logit_cos", "error"])


def cpu_kernel_summary() -> dict:
    """The CPU's flags that matter to bigdl, and the build its flags support."""
    from medwb.sysinfo import cpu, isa_features
    info = cpu()
    return {"cpu": info["model"], "vendor": info["vendor"],
            "flags": {f["feature"]: f["present"] for f in isa_features()},
            "build_matching_flags": bigdl_kernels.matching_build()}


def prepare(model_path, model_family, low_bits, out_dir, threads, run_dir, prompt, kernel_build,
            n_prompts: int = 8, max_new_tokens: int = 32):
    """Resolve the notebook's parameters (defaults: the demo model, all cores, a held-out
    case) and validate them all before anything runs or is written."""
    import types

    from medwb.errors import check_count
    from medwb.models import demo_model
    check_count("n_prompts", n_prompts)
    check_count("max_new_tokens", max_new_tokens)
    check_count("threads", threads, 0, "0: all cores")
    if not model_path:
        model_path = demo_model.ensure()
    threads = threads or sysinfo.default_threads()
    out_dir = out_dir or (Path(run_dir) / "bigdl" if run_dir else Path("bigdl_out"))
    checked = check_parameters(model_path, model_family, low_bits, out_dir, threads)
    if kernel_build == "match":
        kernel_build = bigdl_kernels.matching_build()
    if kernel_build and kernel_build not in bigdl_kernels.BUILDS:
        raise MedwbError(f"kernel_build {kernel_build!r} is unknown; use '', 'match' or one of "
                         f"{', '.join(bigdl_kernels.BUILDS)}")
    if not prompt:
        prompt = corpus.heldout_prompts(1)[0]
    return types.SimpleNamespace(model_dir=checked["model_dir"], model_family=model_family,
                                 low_bits=list(low_bits), out_dir=Path(out_dir), threads=threads,
                                 prompt=prompt, kernel_build=kernel_build or None)


def langchain_demo(low_bit_dir, max_new_tokens: int = 96) -> dict:
    """A LangChain chain on the low-bit model: bigdl's TransformersLLM fills the hospital's
    differential-diagnosis template (medwb.tasks.prompts) for one held-out case."""
    from bigdl.llm.langchain.llms import TransformersLLM
    from langchain import LLMChain, PromptTemplate
    from transformers import GenerationConfig

    # streaming=False: its streaming branch returns the prompt with the answer.
    llm = TransformersLLM.from_model_id_low_bit(model_id=str(low_bit_dir), streaming=False)
    # TransformersLLM passes no generation settings: give the model its own config (an
    # edited config derived from the model's would be replaced by transformers 4.31).
    tok = llm.tokenizer
    llm.model.generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
    template_text = prompts.user_turn(prompts.DIAGNOSIS_PROMPT)
    template = PromptTemplate.from_template(template_text)
    fields = corpus.load_records("diagnosis", limit=1)[0]["case"]
    values = {k: fields[k] for k in template.input_variables}
    answer = LLMChain(llm=llm, prompt=template).run(**values)
    return {"template_variables": template.input_variables, "inputs": values, "answer": answer,
            "true_diagnosis": fields["disease"]}
