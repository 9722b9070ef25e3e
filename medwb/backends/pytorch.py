"""PyTorch / transformers backend: the FP32 reference every other route is compared to."""
from __future__ import annotations

from pathlib import Path

from medwb.backends.registry import Backend, register
from medwb.paths import check_model_dir
from medwb.backends.protocol import ProbeSpec, StreamResult, TimedRun
from medwb.sysinfo import default_threads


def dtype_kwarg(dtype) -> dict:
    """transformers >= 4.56 names it ``dtype``; 4.31 (bigdl env) only knows ``torch_dtype``
    and would silently ignore ``dtype``."""
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_tokenizer(model_dir):
    from transformers import AutoTokenizer
    from medwb.models import sp_tokenizer
    from medwb.models.architectures import trust_kwargs
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, **trust_kwargs())
    except (AttributeError, TypeError, ValueError):
        # A folder's own SentencePiece tokenizer class written for older transformers
        # (Baichuan2's), or the class MedWB read it with (a low-bit folder saved from one):
        # read its tokenizer.model (medwb.models.sp_tokenizer).
        if not sp_tokenizer.available(model_dir):
            raise
        return sp_tokenizer.load(model_dir)
    tokenizer.padding_side = "left"  # batched greedy decoding needs left padding
    return tokenizer


class PyTorchBackend:
    name = "pytorch"

    def __init__(self, model, tokenizer, model_dir: Path, dtype: str, threads: int):
        self.model, self.tokenizer = model, tokenizer
        self.model_dir, self.dtype, self.threads = Path(model_dir), dtype, threads

    @classmethod
    def load(cls, model_dir, dtype: str = "float32", threads: int | None = None,
             parameter: str = "model_path") -> "PyTorchBackend":
        import torch
        from transformers import AutoModelForCausalLM

        model_dir = check_model_dir(model_dir, parameter)
        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {dtype!r} is not supported on CPU: use float32 or bfloat16")
        threads = threads or default_threads()
        torch.set_num_threads(threads)
        tokenizer = load_tokenizer(model_dir)
        from medwb.models.architectures import trust_kwargs
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, local_files_only=True, **dtype_kwarg(getattr(torch, dtype)), **trust_kwargs())
        model.eval()
        return cls(model, tokenizer, model_dir, dtype, threads)

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int = 16,
                 streamer=None) -> list[str]:
        """Greedy completions (decoded, special tokens dropped) of formatted prompts."""
        import torch

        outputs: list[str] = []
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = self.tokenizer(chunk, return_tensors="pt", padding=True)
            with torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id,
                                          streamer=streamer if len(chunk) == 1 else None)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return outputs

    # Token-level protocol used by medwb.bench.probe: the same calls on every backend, so one
    # measurement routine times them all and compares their tokens.
    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate_ids(self, input_ids: list[int], max_new_tokens: int, force_length: bool = False,
                     streamer=None) -> list[int]:
        """Greedy new token ids; ``force_length`` ignores EOS so every run decodes the same
        number of tokens (what a speed measurement needs)."""
        import torch
        ids = torch.tensor([input_ids])
        extra = {"min_new_tokens": max_new_tokens} if force_length else {}
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, pad_token_id=self.tokenizer.pad_token_id,
                                      streamer=streamer, **extra)
        return out[0, len(input_ids):].tolist()

    def stream(self, input_ids: list[int], max_new_tokens: int, on_text) -> StreamResult:
        """Greedy generation that hands decoded text to ``on_text(chunk)`` as it comes (the
        app's cards); ``on_text`` returning True stops it. Returns the text, the number of
        new tokens, the first-token time and whether it was stopped."""
        import time

        from transformers import TextStreamer

        class Stop(Exception):
            pass

        class Streamer(TextStreamer):  # TextStreamer: UTF-8/CJK-safe incremental decoding
            first_token_at, n_new = None, 0

            def put(s, value):
                if not s.next_tokens_are_prompt:
                    s.n_new += 1
                    s.first_token_at = s.first_token_at or time.perf_counter()
                super().put(value)

            def on_finalized_text(s, text, stream_end=False):
                if text and on_text(text):
                    raise Stop

        streamer = Streamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        started = time.perf_counter()
        try:
            ids = self.generate_ids(input_ids, max_new_tokens, streamer=streamer)
            text = self.decode(ids)
        except Stop:
            ids, text = None, None
        return {"text": text, "n_new_tokens": len(ids) if ids is not None else streamer.n_new,
                "ttft_ms": (streamer.first_token_at - started) * 1e3 if streamer.first_token_at else None,
                "stopped": ids is None}

    def timed_generate(self, input_ids: list[int], max_new_tokens: int) -> TimedRun:
        """First-token and per-token latency of one forced-length greedy run."""
        from medwb.backends.measure import TimingStreamer
        streamer = TimingStreamer()
        streamer.begin()
        ids = self.generate_ids(input_ids, max_new_tokens, force_length=True, streamer=streamer)
        return {"ttft_ms": streamer.ttft_ms, "tpot_ms": streamer.tpot_ms,
                "n_new_tokens": len(streamer.times), "output_ids": ids, "timing": "streamer timestamps"}

    def last_token_logits(self, input_ids: list[int]) -> list[float]:
        import torch
        ids = torch.tensor([input_ids])
        with torch.inference_mode():
            return self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().tolist()

    def sequence_logits(self, input_ids: list[int]):
        """Logits at every position of ``input_ids`` (teacher forcing), float32 [n, vocab]. A
        runtime whose forward returns the last position only (bigdl's low-bit one) is fed one
        token at a time through its KV cache instead: the same logits, more slowly."""
        import numpy as np
        import torch
        ids = torch.tensor([input_ids])
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
            if logits.shape[0] == len(input_ids):
                return logits.float().numpy()
            rows, past = [], None
            for i, token in enumerate(input_ids):
                out = self.model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True,
                                 attention_mask=torch.ones(1, i + 1, dtype=torch.long))
                past = out.past_key_values
                rows.append(out.logits[0, -1].float().numpy())
            return np.stack(rows)

    def kernel_times(self, plan: list[dict]) -> list[dict]:
        """torch's linear in the model's dtype, timed for the compute floor (medwb.bench.roofline):
        per ``plan`` entry, r products of one k-vector, each with its own k x n weights. Seconds per call."""
        import torch
        import torch.nn.functional as F

        from medwb.backends.measure import seconds_per_call
        dtype = getattr(torch, self.dtype)  # the torch dtype name the model was loaded in
        gen, out = torch.Generator().manual_seed(0), []
        for p in plan:
            x = torch.randn(1, p["k"], generator=gen).to(dtype)
            ws = [torch.randn(p["n"], p["k"], generator=gen).to(dtype) * 0.02 for _ in range(p["r"])]
            with torch.inference_mode():
                out.append({**p, "s": seconds_per_call(lambda x=x, ws=ws: [F.linear(x, w) for w in ws])})
        return out

    def kernels(self) -> str:
        import torch
        return f"torch {torch.backends.cpu.get_cpu_capability()} (oneDNN {torch.backends.mkldnn.is_available()})"

    def describe(self) -> dict:
        import torch
        import transformers
        return {"backend": self.name, "precision": self.dtype, "model_dir": str(self.model_dir),
                "threads": self.threads, "torch": torch.__version__,
                "transformers": transformers.__version__}


@register
class PyTorch(Backend):
    name, family, route = "pytorch", "pytorch", "pytorch"
    precisions = ("fp32", "bf16")
    imports = ("torch", "transformers")
    kv_bytes = {"fp32": 4, "bf16": 2}

    def weight_bits(self, variant: dict) -> int:
        return 32 if variant["precision"] == "fp32" else 16

    def load(self, spec: ProbeSpec) -> PyTorchBackend:
        dtype = {"fp32": "float32", "bf16": "bfloat16"}[spec["precision"]]
        return PyTorchBackend.load(spec["model_path"], dtype, spec.get("threads"))

    def prepare(self, model_dir: Path, variant: dict, root: Path, cfg: dict, log=print) -> dict:
        from medwb.paths import checkpoint_bytes
        # BF16 is a load-time cast of the same checkpoint: what it holds in memory is half.
        halve = 2 if variant["precision"] == "bf16" else 1
        return {"path": model_dir, "bytes": checkpoint_bytes(model_dir) // halve}
