"""llm-cli backend (bigdl env): bigdl-llm's native INT4/INT8 file run by its llama.cpp-based
command-line tool, as a hospital IT engineer would try it in a shell.

It is a one-shot tool, not a library: every run is a fresh ``llm-cli`` process, so it has
no runtime object and measures itself (:meth:`BigDLCli.probe`), and it cannot serve an
app's long-lived worker. The native file is converted by ``llm-convert`` on first use.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import statistics
from pathlib import Path

from medwb.backends.bigdl import KNOBS
from medwb.backends.registry import Backend, register
from medwb.backends.protocol import ProbeResult, ProbeSpec, Variant

FAMILY = "llama"  # the demo model's family; other families convert but are not wired here


@register
class BigDLCli(Backend):
    name, env, family, route = "bigdl-cli", "bigdl", "bigdl", "bigdl-cli"
    precisions = ("int4", "int8")
    kernel_builds = True
    knobs = {"kernel_build": KNOBS["kernel_build"]}
    serves = False
    measures_itself = True
    reads_torch_bin = True
    no_logits_reason = ("llm-cli prints text only, and its ggml file is read by no runtime here that "
                        "gives logits: its greedy output is compared with FP32's instead (agreement)")
    kv_bytes = 2  # llama.cpp keeps an F16 KV cache

    def model_problems(self, model_dir: Path) -> list[str]:
        from medwb.backends.toolchain.llm_cli import cli_route_problems
        why = cli_route_problems(model_dir, FAMILY)
        return [f"this model cannot take the llm-cli route: {'; '.join(why)}"] if why else []

    def prepare(self, model_dir: Path, variant: Variant, root: Path, cfg: dict, log=print) -> dict:
        # Converted inside the probe: llm-convert needs the bigdl environment.
        return {"path": model_dir, "spec": {"native_dir": str(root / "bigdl-cli")}}

    def kernels_label(self, kernel_build: str | None) -> str | None:
        return f"llm-cli {kernel_build} build"

    def probe(self, spec: ProbeSpec) -> ProbeResult:
        """llm-cli on the native file, converted first if it is not there yet.

        Times are llm-cli's own (llama.cpp) timings, which exclude loading: first token =
        prompt evaluation, next token = eval time per token. Prompts go in as text: llm-cli
        tokenizes them itself (adding a space and BOS), so the input length is read back
        from its timings rather than assumed."""
        from medwb import sysinfo
        from medwb.backends.pytorch import load_tokenizer
        from medwb.backends.toolchain import llm_cli
        from medwb.backends.measure import exact_length
        precision = spec["precision"]
        native = Path(spec["native_dir"]) / f"bigdl_llm_{FAMILY}_{'q4_0' if precision == 'int4' else 'q8_0'}.bin"
        result: dict = {"describe": {"backend": self.name, "precision": precision, "model_dir": spec["model_path"],
                                     "bigdl_llm": importlib.metadata.version("bigdl-llm")},
                        "machine_load": sysinfo.machine_load()}
        if not native.exists():
            conv = llm_cli.convert(spec["model_path"], spec["native_dir"], FAMILY, precision)
            result.update(convert_s=conv["seconds"], convert_command=conv["command"])
        result["saved_bytes"] = native.stat().st_size
        tok = load_tokenizer(spec["model_path"])
        kb, threads = spec.get("kernel_build"), spec["threads"]

        def cli(text: str, n: int, ignore_eos: bool) -> dict:
            return llm_cli.run_cli(native, FAMILY, text, threads, n, kernel_build=kb, ignore_eos=ignore_eos)

        peaks, pairs = [], []
        base = tok(spec["pair_prompt"])["input_ids"] if spec.get("token_pairs") else []
        for n_in, n_out in spec.get("token_pairs", []):
            # BOS dropped: llm-cli adds its own.
            text = tok.decode(exact_length(base, n_in)[1:], skip_special_tokens=True)
            runs = [cli(text, n_out, True) for _ in range(spec.get("trials", 1))]
            peaks += [r["peak_rss_mb"] for r in runs]
            ttfts = [r["timings"]["prompt_eval_time_ms"] for r in runs]
            tpots = [r["timings"]["eval_time_ms"] / r["timings"]["eval_time_count"] for r in runs]
            t = runs[-1]["timings"]
            pairs.append({"input_tokens": n_in, "output_tokens": n_out,
                          "ttft_ms": round(statistics.median(ttfts), 3),
                          "tpot_ms": round(statistics.median(tpots), 4), "ttft_ms_trials": ttfts,
                          "tpot_ms_trials": [round(x, 4) for x in tpots],
                          "throughput_tok_s": round(1e3 / statistics.median(tpots), 2),
                          "n_prompt_tokens": t.get("prompt_eval_time_count"),
                          "n_new_tokens": t.get("eval_time_count", 0) + 1,
                          "trials": len(runs), "timing": "llm-cli timings (llama.cpp)",
                          "load_s": t.get("load_time_ms", 0) / 1e3, "kernel_build": runs[-1]["kernel_build"],
                          "output_md5": hashlib.md5(runs[-1]["text"].encode("utf-8")).hexdigest()})
        result["pairs"] = pairs
        budgets = spec.get("prompt_budgets") or [spec.get("agreement_new_tokens", 32)] * len(spec.get("prompts", []))
        texts = []
        for prompt, budget in zip(spec.get("prompts", []), budgets):
            r = cli(prompt, budget, False)
            peaks.append(r["peak_rss_mb"])
            texts.append(r["text"])
            result.setdefault("kernel_build", r["kernel_build"])
        build = result.get("kernel_build") or (pairs[0]["kernel_build"] if pairs else None)
        result.update(texts=texts, output_ids=[tok(t, add_special_tokens=False)["input_ids"] for t in texts],
                      last_logits=[None] * len(texts), peak_rss_mb=max(peaks, default=None),
                      load_s=pairs[0]["load_s"] if pairs else None, kernel_builds={FAMILY: build})
        return result
