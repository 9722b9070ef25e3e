"""OpenVINO GenAI (main env): ``openvino_genai.LLMPipeline`` over the same stateful IR.

Needs the converted tokenizer (openvino_tokenizer.xml / openvino_detokenizer.xml). Prompts
arrive already formatted (medwb.tasks.prompts.render_chat), so the pipeline's own chat template
is switched off. Prefix caching is off: on CPU it is on by default and makes a repeated
prompt's first token look about 3x faster than it is.
"""
from __future__ import annotations

from pathlib import Path

from medwb.backends.openvino import OpenVINOOptimum, cpu_properties, load_properties
from medwb.backends.registry import register
from medwb.errors import MedwbError
from medwb.backends.toolchain.openvino_export import check_ir_dir
from medwb.backends.protocol import ProbeSpec, StreamResult, TimedRun
from medwb.sysinfo import default_threads


def _greedy_config(max_new_tokens: int, force_length: bool):
    """Greedy, prompts already chat-formatted; ``force_length`` ignores EOS (speed runs)."""
    import openvino_genai as og
    cfg = og.GenerationConfig()
    cfg.max_new_tokens, cfg.do_sample, cfg.apply_chat_template = max_new_tokens, False, False
    if force_length:
        cfg.min_new_tokens, cfg.ignore_eos = max_new_tokens, True
    return cfg


class GenAIBackend:
    name = "openvino-genai"

    def __init__(self, pipe, ir_dir: Path, precision: str, threads: int, props: dict):
        self.pipe, self.model_dir, self.precision, self.threads, self.props = pipe, ir_dir, precision, threads, props

    @classmethod
    def load(cls, ir_dir, inference_precision: str = "f32", kv_cache_precision: str | None = None,
             threads: int | None = None, parameter: str = "ir_dir", props: dict | None = None) -> "GenAIBackend":
        import openvino_genai as og

        ir_dir = check_ir_dir(ir_dir, parameter)
        for f in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
            if not (ir_dir / f).exists():
                raise MedwbError(f"{parameter} '{ir_dir}' has no {f}: openvino-genai needs the "
                                 "converted tokenizer (medwb.backends.toolchain.openvino_export writes it)")
        threads = threads or default_threads()
        props = props or cpu_properties(inference_precision, kv_cache_precision, threads)
        scheduler = og.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        pipe = og.LLMPipeline(str(ir_dir), "CPU", scheduler_config=scheduler, **props)
        return cls(pipe, ir_dir, inference_precision, threads, props)

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int = 1,
                 streamer=None) -> list[str]:
        """Greedy completions; ``streamer(text_chunk)`` receives text as it is generated."""
        cfg = _greedy_config(max_new_tokens, force_length=False)
        out = []
        for prompt in prompts:
            if streamer is None:
                out.append(str(self.pipe.generate(prompt, cfg)))
            else:
                out.append(str(self.pipe.generate(prompt, cfg, lambda chunk: bool(streamer(chunk)))))
        return out

    # Token-level protocol of medwb.bench.probe (see PyTorchBackend).
    def encode(self, prompt: str) -> list[int]:
        return [int(t) for t in self.pipe.get_tokenizer().encode(prompt).input_ids.data[0]]

    def decode(self, ids: list[int]) -> str:
        return self.pipe.get_tokenizer().decode(ids)

    def _run_ids(self, input_ids: list[int], max_new_tokens: int, force_length: bool, streamer=None):
        import numpy as np
        import openvino as ov
        import openvino_genai as og
        ids = np.array([input_ids], dtype=np.int64)
        return self.pipe.generate(og.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))),
                                  _greedy_config(max_new_tokens, force_length), streamer)

    def generate_ids(self, input_ids: list[int], max_new_tokens: int, force_length: bool = False) -> list[int]:
        return [int(t) for t in self._run_ids(input_ids, max_new_tokens, force_length).tokens[0]]

    def stream(self, input_ids: list[int], max_new_tokens: int, on_text) -> StreamResult:
        """As PyTorchBackend.stream: text chunks to ``on_text``, which returns True to stop.
        The first-token time is the pipeline's own."""
        import openvino_genai as og
        stopped = False

        def callback(chunk: str):
            nonlocal stopped
            stopped = bool(on_text(chunk)) or stopped
            return og.StreamingStatus.STOP if stopped else og.StreamingStatus.RUNNING
        res = self._run_ids(input_ids, max_new_tokens, False, callback)
        tokens = [int(t) for t in res.tokens[0]]
        return {"text": None if stopped else self.decode(tokens), "n_new_tokens": len(tokens),
                "ttft_ms": float(res.perf_metrics.get_ttft().mean), "stopped": stopped}

    def timed_generate(self, input_ids: list[int], max_new_tokens: int) -> TimedRun:
        """Timed by the pipeline's own perf metrics (no Python callback per token)."""
        res = self._run_ids(input_ids, max_new_tokens, force_length=True)
        pm = res.perf_metrics
        return {"ttft_ms": float(pm.get_ttft().mean), "tpot_ms": float(pm.get_tpot().mean),
                "n_new_tokens": int(pm.get_num_generated_tokens()),
                "output_ids": [int(t) for t in res.tokens[0]], "timing": "openvino_genai perf_metrics"}

    def last_token_logits(self, input_ids: list[int]) -> None:
        return None  # LLMPipeline does not expose logits; agreement uses tokens only

    def kernels(self) -> str:
        """LLMPipeline does not expose its compiled model: the same IR is compiled once more
        with the same properties and run for one step to read which kernels the CPU plugin
        picks."""
        import openvino as ov

        from medwb.backends.openvino import compiled_kernels
        core = ov.Core()
        compiled = core.compile_model(core.read_model(str(self.model_dir / "openvino_model.xml")), "CPU", self.props)
        return compiled_kernels(compiled, execute=True)

    def kernel_times(self, plan: list[dict]) -> list[dict]:
        from medwb.backends.openvino import kernel_times
        return kernel_times(plan, self.props, self.model_dir)

    def describe(self) -> dict:
        import importlib.metadata
        return {"backend": self.name, "precision": self.precision, "model_dir": str(self.model_dir),
                "threads": self.threads, "requested": self.props,
                "openvino_genai": importlib.metadata.version("openvino-genai")}


@register
class OpenVINOGenAI(OpenVINOOptimum):
    name, route = "openvino-genai", "openvino-genai"
    imports = ("openvino", "openvino_genai")
    logits_via = "openvino-optimum"  # LLMPipeline gives no logits: the same IR through optimum

    def load(self, spec: ProbeSpec):
        return GenAIBackend.load(spec["model_path"], spec["precision"], threads=spec.get("threads"),
                                 props=load_properties(self, spec))
