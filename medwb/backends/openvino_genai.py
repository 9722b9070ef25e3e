"""OpenVINO GenAI (main env): ``openvino_genai.LLMPipeline`` over the same stateful IR.

Needs the converted tokenizer (openvino_tokenizer.xml / openvino_detokenizer.xml). Prompts
arrive already formatted (medwb.prompts.render_chat), so the pipeline's own chat template
is switched off. Prefix caching is off: on CPU it is on by default and makes a repeated
prompt's first token look about 3x faster than it is.
"""
from __future__ import annotations

import os
from pathlib import Path

from medwb.backends.openvino import cpu_properties
from medwb.errors import MedwbError
from medwb.openvino_export import check_ir_dir


class GenAIBackend:
    name = "openvino-genai"

    def __init__(self, pipe, ir_dir: Path, precision: str, threads: int, props: dict):
        self.pipe, self.model_dir, self.precision, self.threads, self.props = pipe, ir_dir, precision, threads, props

    @classmethod
    def load(cls, ir_dir, inference_precision: str = "f32", kv_cache_precision: str | None = None,
             threads: int | None = None, parameter: str = "ir_dir") -> "GenAIBackend":
        import openvino_genai as og

        ir_dir = check_ir_dir(ir_dir, parameter)
        for f in ("openvino_tokenizer.xml", "openvino_detokenizer.xml"):
            if not (ir_dir / f).exists():
                raise MedwbError(f"{parameter} '{ir_dir}' has no {f}: openvino-genai needs the "
                                 "converted tokenizer (medwb.openvino_export writes it)")
        threads = threads or os.cpu_count() or 1
        props = cpu_properties(inference_precision, kv_cache_precision, threads)
        props.pop("CACHE_DIR")
        scheduler = og.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        pipe = og.LLMPipeline(str(ir_dir), "CPU", scheduler_config=scheduler, **props)
        return cls(pipe, ir_dir, inference_precision, threads, props)

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int = 1,
                 streamer=None) -> list[str]:
        """Greedy completions; ``streamer(text_chunk)`` receives text as it is generated."""
        import openvino_genai as og
        cfg = og.GenerationConfig()
        cfg.max_new_tokens = max_new_tokens
        cfg.do_sample = False
        cfg.apply_chat_template = False
        out = []
        for prompt in prompts:
            if streamer is None:
                out.append(str(self.pipe.generate(prompt, cfg)))
            else:
                out.append(str(self.pipe.generate(prompt, cfg, lambda chunk: bool(streamer(chunk)))))
        return out

    def describe(self) -> dict:
        import importlib.metadata
        return {"backend": self.name, "precision": self.precision, "model_dir": str(self.model_dir),
                "threads": self.threads, "requested": self.props,
                "openvino_genai": importlib.metadata.version("openvino-genai")}
