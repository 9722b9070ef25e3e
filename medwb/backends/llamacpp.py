"""llama.cpp (llamacpp env): the peer most users would pick instead of the two routes.

``llama-cpp-python`` built for this CPU by ``make setup`` (medwb.backends.toolchain.
llamacpp_setup) over a GGUF file made by llama.cpp's own converter and quantizer
(medwb.backends.toolchain.gguf_export): ``llama.cpp:q4_0``, ``q4_k_m``, ``q8_0``, ``f16``,
``f32``. Same protocol as every backend: greedy, forced length for speed, timestamps per
token taken around the library's own generate loop (what a user of llama-cpp-python gets).

A machine where it could not be built gets an error record quoting why (the build's
``UNAVAILABLE`` note), never a crash: the other variants carry on.

Prefix reuse is off for measurements: llama-cpp-python keeps the KV cache of the previous
call and skips the common prefix of the next prompt, which would make a repeated timing
prompt's first token look free. Each call starts from an empty cache (``reset``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from medwb.backends.registry import Backend, register
from medwb.errors import MedwbError
from medwb.backends.protocol import ProbeSpec, StreamResult, TimedRun, Variant
from medwb.sysinfo import default_threads

ENV = "llamacpp"
BENCH_CONTEXT = 4096  # llama-cli's and llama-server's default --ctx-size


class LlamaCppBackend:
    name = "llama.cpp"

    def __init__(self, llm, gguf_file: Path, precision: str, threads: int):
        self.llm, self.model_dir, self.precision, self.threads = llm, gguf_file, precision, threads

    @classmethod
    def load(cls, gguf_file, precision: str, threads: int | None = None, n_ctx: int = 0) -> "LlamaCppBackend":
        """``n_ctx`` 0: the model's context; else at most that (never beyond the model's)."""
        from llama_cpp import Llama
        gguf_file = Path(gguf_file)
        if gguf_file.is_dir():
            gguf_file = gguf_file / "model.gguf"
        if not gguf_file.exists():
            raise MedwbError(f"model_path '{gguf_file}' is not a GGUF file (gguf_export makes one)")
        threads = threads or default_threads()
        # n_ctx 0: the checkpoint's context (config.json beside the GGUF), else the GGUF's
        # own. llama.cpp's converter writes a native glm folder's context as its hidden size
        # (it looks for ChatGLM's seq_length), so the file's figure is not trusted first.
        # No mmap, so that the load (and its peak RSS) includes reading the weights, as the
        # other backends' loads do.
        config = gguf_file.parent / "config.json"
        if config.exists():
            model_ctx = int(json.loads(config.read_text(encoding="utf-8")).get("max_position_embeddings") or 0)
            n_ctx = min(n_ctx, model_ctx) if n_ctx and model_ctx else n_ctx or model_ctx
        # F32 is the FP32 reference of the families PyTorch cannot run here (registry.reference_for):
        # its key/value cache is F32 too (with llama.cpp's default F16 cache a tiny Baichuan2's
        # logits were 2e-3 off the folder's own FP32 code's; with F32, 5e-6: measured).
        kv = {"type_k": 0, "type_v": 0} if precision == "f32" else {}  # GGML_TYPE_F32
        llm = Llama(model_path=str(gguf_file), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                    n_batch=512, use_mmap=False, logits_all=False, verbose=False, seed=0, **kv)
        return cls(llm, gguf_file, precision, threads)

    # --- runtime protocol (medwb.backends.registry) ---------------------------------------
    def encode(self, prompt: str) -> list[int]:
        return list(self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

    def decode(self, ids: list[int]) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    def _tokens(self, input_ids: list[int], max_new_tokens: int, force_length: bool):
        """Greedy new tokens one by one (EOS, included, ends it unless ``force_length``)."""
        self.llm.reset()  # no prefix reuse: see the module docstring
        eos = self.llm.token_eos()
        n = 0
        for token in self.llm.generate(list(input_ids), top_k=1, top_p=1.0, min_p=0.0, temp=0.0,
                                       repeat_penalty=1.0, reset=True):
            yield int(token)  # EOS included, as transformers' generate returns it
            if token == eos and not force_length:
                return
            n += 1
            if n >= max_new_tokens:
                return

    def generate_ids(self, input_ids: list[int], max_new_tokens: int, force_length: bool = False) -> list[int]:
        return list(self._tokens(input_ids, max_new_tokens, force_length))

    def timed_generate(self, input_ids: list[int], max_new_tokens: int) -> TimedRun:
        start = time.perf_counter()
        ids, times = [], []
        for token in self._tokens(input_ids, max_new_tokens, force_length=True):
            times.append(time.perf_counter())
            ids.append(token)
        tpot = (times[-1] - times[0]) * 1e3 / (len(times) - 1) if len(times) > 1 else None
        return {"ttft_ms": (times[0] - start) * 1e3 if times else None, "tpot_ms": tpot,
                "n_new_tokens": len(ids), "output_ids": ids, "timing": "timestamps per token (llama-cpp-python generate)"}

    def stream(self, input_ids: list[int], max_new_tokens: int, on_text) -> StreamResult:
        """Text to ``on_text`` as it is decoded (True stops it). Bytes are joined before
        decoding: a byte-level token can end inside a UTF-8 character."""
        import codecs
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        start, first, ids, stopped = time.perf_counter(), None, [], False
        for token in self._tokens(input_ids, max_new_tokens, force_length=False):
            first = first or time.perf_counter()
            ids.append(token)
            chunk = decoder.decode(self.llm.detokenize([token]))
            if chunk and on_text(chunk):
                stopped = True
                break
        return {"text": None if stopped else self.decode(ids), "n_new_tokens": len(ids),
                "ttft_ms": (first - start) * 1e3 if first else None, "stopped": stopped}

    def last_token_logits(self, input_ids: list[int]) -> list[float]:
        self.llm.reset()
        self.llm.eval(list(input_ids))
        return [float(x) for x in self._last_logits()]

    def _last_logits(self):
        """The last evaluated position's logits, read from the context: without
        ``logits_all`` llama-cpp-python 0.3 no longer copies them into ``scores`` (zeros)."""
        import llama_cpp
        import numpy as np
        n_vocab = self.llm.n_vocab()
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(n_vocab,)).astype(np.float32)

    def sequence_logits(self, input_ids: list[int]):
        """Logits at every position (teacher forcing), float32 [n, vocab]: one token per eval,
        so the context built without ``logits_all`` still gives each position's row."""
        import numpy as np
        self.llm.reset()
        rows = []
        for token in input_ids:
            self.llm.eval([token])
            rows.append(self._last_logits())
        return np.stack(rows)

    def kernels(self) -> str:
        """The ISA features this llama.cpp build uses (its system info, the ones set)."""
        import re

        import llama_cpp
        info = llama_cpp.llama_print_system_info().decode()
        used = re.findall(r"(\w+) = 1", info)
        return f"llama.cpp ({' '.join(used)})"

    def kernel_times(self, plan: list[dict]) -> list[dict]:
        from medwb.backends.toolchain import ggml_kernels
        return ggml_kernels.kernel_times(plan, self.precision, self.threads)

    def describe(self) -> dict:
        import llama_cpp
        return {"backend": self.name, "precision": self.precision, "model_dir": str(self.model_dir),
                "threads": self.threads, "llama_cpp_python": llama_cpp.__version__}


def unavailable() -> str | None:
    """Why the llamacpp environment cannot run llama.cpp here (None: it can)."""
    from medwb import envs
    from medwb.backends.toolchain.llamacpp_setup import UNAVAILABLE
    python = envs.python_of(ENV)
    note = python.parent.parent / UNAVAILABLE
    if note.exists():
        return note.read_text(encoding="utf-8").strip()
    if not python.exists():
        return f"the llamacpp environment is missing ({python}): run `make setup`"
    return None


@register
class LlamaCpp(Backend):
    name, env, family, route = "llama.cpp", ENV, "llama.cpp", "llama.cpp"
    precisions = ("q4_0", "q4_k_m", "q8_0", "f16", "f32")
    imports = ("llama_cpp",)
    optional_env = True  # not built on every machine: a variant here is an error record, not a refusal
    kv_bytes = 2  # llama.cpp keeps an F16 KV cache by default
    peer = True

    def load(self, spec: ProbeSpec):
        # A benchmark sizes the context as llama.cpp's own tools do by default (4096 tokens),
        # or to its longest token pair: llama.cpp allocates the KV cache for its whole context
        # at load, and a model's full one (GLM-4-9B: 131,072 tokens, 5.4 GB) would be charged
        # to its peak memory where OpenVINO and the Intel route grow theirs. An app worker
        # (no token pairs) keeps the model's context: it fits records to it.
        pairs = spec.get("token_pairs") or []
        n_ctx = max([BENCH_CONTEXT] + [sum(p) for p in pairs]) if pairs else 0
        return LlamaCppBackend.load(spec["model_path"], spec["precision"], spec.get("threads"), n_ctx=n_ctx)

    def prepare(self, model_dir: Path, variant: Variant, root: Path, cfg: dict, log=print) -> dict:
        """The checkpoint's own-precision GGUF once per model (llama.cpp's converter, main
        env: F32, or BF16/F16 for a 16-bit checkpoint), then the precision (llama.cpp's
        quantizer, llamacpp env); both reused."""
        from medwb import envs
        from medwb.backends.toolchain import gguf_export as ge
        why = unavailable()
        if why:
            return {"error": why}
        kind = ge.outtype(model_dir)
        base, out = root / f"gguf-{kind}", root / f"gguf-{variant['precision']}"
        timeout = cfg.get("timeout_s", 1800)
        conv = ge.built(base)  # made before: read here, no child process
        if conv is None:
            log(f"converting to GGUF ({kind.upper()}) in {base} ...")
            conv = envs.query_json("main", ["-m", ge.__name__, "convert", str(model_dir), str(base)],
                                   timeout=timeout, raise_error=False)
            if "error" in conv:
                return {"error": conv["error"]}
        quant = ge.built(out) or envs.query_json(
            ENV, ["-m", ge.__name__, "quantize", str(base), str(out), variant["precision"]],
            timeout=timeout, raise_error=False)
        if "error" in quant:
            return {"error": quant["error"]}
        return {"path": out, "bytes": quant["bytes"],
                "export_s": round(conv["seconds"] + quant["seconds"], 1),
                "weights_read_bytes": quant["weights_read_bytes"], "tensor_types": quant["types"]}
