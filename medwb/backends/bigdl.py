"""BigDL-LLM backend (bigdl env only): low-bit weights through ``bigdl.llm.transformers``.

The case study's quantized route, API side: change the import, pass ``load_in_4bit=True``
or ``load_in_low_bit=...``, and optionally save the converted weights with
``save_low_bit`` so later loads skip the FP32-sized peak of converting a full checkpoint.
Generation reuses the transformers ``generate`` of :class:`PyTorchBackend`.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from medwb.backends.pytorch import PyTorchBackend, load_tokenizer
from medwb.errors import MedwbError
from medwb.paths import atomic_dir, check_model_dir, linear_input_dims, model_config

# Measured with bigdl-llm 2.4.0 on CPU (see the stack notes): these load and generate.
CPU_LOW_BITS = ("sym_int4", "asym_int4", "sym_int5", "sym_int8")
# Accepted by bigdl's API but unusable on CPU: refused up front with the reason.
NOT_ON_CPU = {
    "nf4": "raises 'not supported on CPU'", "nf3": "raises 'not supported on CPU'",
    "fp4": "raises 'not supported on CPU'", "fp8": "raises 'not supported on CPU'",
    "fp16": "converts nothing on CPU (the model stays FP32)",
}


def check_low_bit(low_bit: str, parameter: str = "low_bits") -> str:
    if low_bit in CPU_LOW_BITS:
        return low_bit
    why = NOT_ON_CPU.get(low_bit, "is not a bigdl-llm low-bit type")
    raise MedwbError(f"{parameter}: {low_bit!r} {why}; use one of {', '.join(CPU_LOW_BITS)}")


def is_low_bit_dir(path: Path) -> str | None:
    """The low-bit type a ``save_low_bit`` folder holds, or None for an ordinary checkpoint."""
    try:
        return model_config(path).get("bigdl_transformers_low_bit") or None
    except (OSError, ValueError):
        return None


def _check_linear_dims(model_dir: Path) -> None:
    """bigdl's low-bit kernels need every Linear input size to be a multiple of 64."""
    bad = {k: v for k, v in linear_input_dims(model_dir).items() if v % 64}
    if bad:
        raise MedwbError(f"model_path '{model_dir}': bigdl low-bit kernels need Linear input sizes "
                         f"that are multiples of 64, got {bad}")


class BigDLBackend(PyTorchBackend):
    name = "bigdl"

    def __init__(self, model, tokenizer, model_dir: Path, low_bit: str, threads: int,
                 source: str):
        super().__init__(model, tokenizer, model_dir, low_bit, threads)
        self.low_bit, self.source = low_bit, source

    @classmethod
    def load(cls, model_dir, low_bit: str = "sym_int4", threads: int | None = None,
             optimize_model: bool = True, parameter: str = "model_path") -> "BigDLBackend":
        """Quantize an FP32/FP16 checkpoint on load, or load a ``save_low_bit`` folder."""
        import torch
        from bigdl.llm.transformers import AutoModelForCausalLM

        model_dir = check_model_dir(model_dir, parameter)
        threads = threads or os.cpu_count() or 1
        torch.set_num_threads(threads)
        saved = is_low_bit_dir(model_dir)
        if saved:
            model = AutoModelForCausalLM.load_low_bit(str(model_dir), optimize_model=optimize_model)
            low_bit, source = saved, "load_low_bit"
        else:
            check_low_bit(low_bit)
            _check_linear_dims(model_dir)
            kwargs = {"load_in_4bit": True} if low_bit == "sym_int4" else {"load_in_low_bit": low_bit}
            model = AutoModelForCausalLM.from_pretrained(
                str(model_dir), optimize_model=optimize_model, torch_dtype=torch.float32, **kwargs)
            source = "from_pretrained(" + ", ".join(f"{k}={v!r}" for k, v in kwargs.items()) + ")"
        model.eval()
        return cls(model, load_tokenizer(model_dir), model_dir, low_bit, threads, source)

    def save_low_bit(self, out_dir) -> Path:
        """Write the converted weights and the tokenizer; atomic (temp dir, then rename)."""
        out_dir = Path(out_dir)
        with atomic_dir(out_dir, overwrite=True) as tmp:
            self.model.save_low_bit(str(tmp))
            self.tokenizer.save_pretrained(str(tmp))
            for extra in ("generation_config.json",):
                if (self.model_dir / extra).exists() and not (tmp / extra).exists():
                    shutil.copy2(self.model_dir / extra, tmp / extra)
        return out_dir

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int = 1,
                 streamer=None) -> list[str]:
        # One prompt at a time: bigdl's optimized attention is not written for padded batches.
        return super().generate(prompts, max_new_tokens, batch_size=1, streamer=streamer)

    def describe(self) -> dict:
        import importlib.metadata
        info = super().describe()
        info.update(backend=self.name, precision=self.low_bit, load=self.source,
                    bigdl_llm=importlib.metadata.version("bigdl-llm"))
        return info
