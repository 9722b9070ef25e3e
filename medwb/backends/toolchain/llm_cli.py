"""BigDL-LLM's CLI route (bigdl env): ``llm-convert`` to a native INT4/INT8 file, ``llm-cli``
to try it, exactly as a hospital IT engineer would in a shell.

Every function returns the command it ran, so notebooks can print it for the reader to
re-run. Families and precisions follow bigdl-llm 2.4.0: int8 only for llama, gptneox and
starcoder; chatglm int4 only; llama needs a SentencePiece ``tokenizer.model`` (the demo
model's ByteLevel vocabulary is exported in that format, same ids, into a staging folder,
so the model directory itself is never changed).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import check_model_dir, model_config

FAMILIES = ("llama", "bloom", "gptneox", "starcoder", "chatglm")
PRECISIONS = {"llama": ("int4", "int8"), "gptneox": ("int4", "int8"), "starcoder": ("int4", "int8"),
              "bloom": ("int4",), "chatglm": ("int4",)}
# llm-cli's llama loader knows these depths only ("Unknown model size" otherwise).
LLAMA_CLI_LAYERS = (26, 32, 40, 60, 80)


def takes_shape(config: dict) -> bool:
    """Whether llm-cli's llama loader takes a model of this config (depth, full multi-head)."""
    return config.get("num_hidden_layers") in LLAMA_CLI_LAYERS and \
        config.get("num_key_value_heads") == config.get("num_attention_heads")
# llm-convert reads the whole FP32 pytorch_model.bin into memory and quantizes tensor by
# tensor: an estimate, not a measurement (each conversion records its peak_rss_mb).
CONVERT_RAM_FACTOR = 2.0
# Which config "model_type" each family converter expects.
MODEL_TYPES = {"llama": ("llama",), "bloom": ("bloom",), "gptneox": ("gpt_neox",),
               "starcoder": ("gpt_bigcode",), "chatglm": ("chatglm",)}


def bin_dir() -> Path:
    """The bigdl env's scripts folder (llm-convert, llm-cli), next to its python."""
    return Path(sys.executable).parent


def family_problem(model_dir: Path, family: str) -> str | None:
    """Why ``family`` is not the model family of the checkpoint in ``model_dir`` (None: it is)."""
    if family not in FAMILIES:
        return f"model_family {family!r} is unknown; use one of {', '.join(FAMILIES)}"
    model_type = model_config(model_dir).get("model_type")
    if model_type not in MODEL_TYPES[family]:
        return (f"model_family {family!r} does not match the checkpoint at '{model_dir}' "
                f"(config.json model_type is {model_type!r})")
    return None


def cli_route_problems(model_dir: Path, family: str) -> list[str]:
    """Why ``model_dir`` cannot take the CLI route as ``family`` (empty: it can)."""
    wrong_family = family_problem(model_dir, family)
    if family not in FAMILIES:
        return [wrong_family]
    cfg = model_config(model_dir)
    model_type = cfg.get("model_type")
    problems = [wrong_family] if wrong_family else []
    if not (model_dir / "pytorch_model.bin").exists():
        problems.append("llm-convert reads pytorch_model.bin only; this checkpoint has none "
                        "(re-save it with save_pretrained(..., safe_serialization=False))")
    if family == "llama" and model_type == "llama":
        if cfg.get("num_hidden_layers") not in LLAMA_CLI_LAYERS:
            problems.append(f"llm-cli's llama loader accepts {LLAMA_CLI_LAYERS} layers, this model "
                            f"has {cfg.get('num_hidden_layers')}")
        kv = cfg.get("num_key_value_heads", cfg.get("num_attention_heads"))
        if kv != cfg.get("num_attention_heads"):
            problems.append("grouped-query attention (num_key_value_heads != num_attention_heads) "
                            "converts but fails to load in llm-cli")
    return problems


def sentencepiece_file(model_dir: Path) -> Path:
    """The SentencePiece export of ``model_dir``'s tokenizer, derived once into the medwb
    cache (keyed by the tokenizer files' checksum and the model's vocabulary size) and
    reused by every later convert."""
    import hashlib

    from medwb.paths import cache_dir
    h = hashlib.sha256()
    for f in sorted(Path(model_dir).glob("*")):
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")) and f.is_file():
            h.update(f.name.encode() + f.read_bytes())
    h.update(str(model_config(model_dir).get("vocab_size")).encode())
    key = h.hexdigest()[:16]
    path = cache_dir() / "sentencepiece" / f"{key}.model"
    if not path.exists():
        export_sentencepiece_vocab(model_dir, path)
    return path


def export_sentencepiece_vocab(model_dir: Path, out_file: Path) -> Path:
    """Write the tokenizer's vocabulary as a SentencePiece model with identical ids.

    A model whose embedding has more rows than its tokenizer has tokens (the random-weight
    shapes reuse the demo model's tokenizer) gets unused pieces up to ``vocab_size``:
    llm-convert checks that the two sizes match, and the tokenizer never produces those ids.

    For llama.cpp-style runtimes: byte tokens as <0xNN> pieces, merged tokens as their
    text (spaces as U+2581), scored by merge order so that the runtime's greedy merging
    follows the BPE merge order. Tokens that are partial UTF-8 sequences cannot be
    SentencePiece text; they keep their ByteLevel spelling and the lowest score (the
    runtime never forms them from text).
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2
    from transformers import AutoTokenizer

    from medwb.models.tokenizer import bytes_to_unicode

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    if [t for t, _ in vocab[:3]] != ["<unk>", "<s>", "</s>"]:
        raise MedwbError(f"model_path '{model_dir}': tokenizer is not in the Llama layout "
                         "(<unk>, <s>, </s> first); the SentencePiece export needs it")
    m = sp_pb2.ModelProto()
    m.trainer_spec.model_type = sp_pb2.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(vocab)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 0, 1, 2, -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    seen = set()
    P = sp_pb2.ModelProto.SentencePiece
    for token, i in vocab:
        piece = m.pieces.add()
        if i == 0:
            piece.piece, piece.type, piece.score = token, P.UNKNOWN, 0.0
        elif i in (1, 2):
            piece.piece, piece.type, piece.score = token, P.CONTROL, 0.0
        elif 3 <= i < 259:
            piece.piece, piece.type, piece.score = f"<0x{i - 3:02X}>", P.BYTE, 0.0
        else:
            raw = bytes(byte_of[c] for c in token)
            try:
                text = raw.decode("utf-8").replace(" ", "\u2581")
                piece.type, piece.score = P.NORMAL, float(-i)
            except UnicodeDecodeError:
                text, piece.type, piece.score = token, P.UNUSED, -1e9
            if text in seen:  # SentencePiece needs unique pieces
                text, piece.type, piece.score = token + f"#{i}", P.UNUSED, -1e9
            piece.piece = text
        seen.add(piece.piece)
    for i in range(len(vocab), model_config(model_dir).get("vocab_size") or 0):
        m.pieces.add(piece=f"<unused{i}>", type=P.UNUSED, score=-1e9)
    m.trainer_spec.vocab_size = len(m.pieces)
    from medwb.paths import atomic_file
    with atomic_file(out_file) as f:  # complete or absent, never half-written
        f.write(m.SerializeToString())
    return Path(out_file)


def _run(cmd: list[str], timeout: float, env=None, errors: str = "replace") -> subprocess.CompletedProcess:
    """Run a bigdl script with this env's scripts first on PATH; ``peak_rss_mb`` is set on
    the result (the command's own peak memory, measured from outside)."""
    from medwb.backends.measure import run_tracking_peak_rss
    path_env = {**os.environ, "PATH": f"{bin_dir()}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc, peak = run_tracking_peak_rss(cmd, timeout, env={**path_env, **(env or {})}, errors=errors)
    proc.peak_rss_mb = round(peak, 1)
    return proc


def convert(model_dir, out_dir, family: str, precision: str, timeout: float = 1800) -> dict:
    """``llm-convert`` one precision; returns the file, the command and the seconds taken.

    The output appears in ``out_dir`` only when complete (written in a temp folder first).
    """
    model_dir = check_model_dir(model_dir)
    problems = cli_route_problems(model_dir, family)
    if problems:
        raise MedwbError("; ".join(problems))
    if precision not in PRECISIONS[family]:
        raise MedwbError(f"llm-convert: {family} takes {', '.join(PRECISIONS[family])}, not {precision!r}")
    from medwb.sysinfo import check_ram
    memory = check_ram(int((model_dir / "pytorch_model.bin").stat().st_size * CONVERT_RAM_FACTOR),
                       f"llm-convert of '{model_dir}'", f"{CONVERT_RAM_FACTOR:g}x pytorch_model.bin",
                       "free memory or convert on a larger machine")
    out_dir = Path(out_dir)
    final = out_dir / f"bigdl_llm_{family}_{'q4_0' if precision == 'int4' else 'q8_0'}.bin"
    out_dir.mkdir(parents=True, exist_ok=True)
    # The work folder sits inside out_dir so the final rename never crosses filesystems.
    with tempfile.TemporaryDirectory(prefix=".llm-convert-", dir=out_dir) as tmp:
        src = Path(tmp) / "checkpoint"
        src.mkdir()
        for name in ("config.json", "pytorch_model.bin"):
            (src / name).symlink_to((model_dir / name).resolve())
        if family == "llama" and not (model_dir / "tokenizer.model").exists():
            (src / "tokenizer.model").symlink_to(sentencepiece_file(model_dir))
        elif (model_dir / "tokenizer.model").exists():
            (src / "tokenizer.model").symlink_to((model_dir / "tokenizer.model").resolve())
        work = Path(tmp) / "out"
        work.mkdir()
        cmd = ["llm-convert", str(src), "-o", str(work), "-x", family, "-f", "pth", "-t", precision]
        started = time.perf_counter()
        proc = _run(cmd, timeout)
        seconds = time.perf_counter() - started
        produced = sorted(work.glob("*.bin"))
        if proc.returncode != 0 or not produced:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MedwbError(f"llm-convert failed for {family}/{precision}: {tail[0]}")
        os.replace(produced[0], final)
    shown = cmd[:]
    shown[1], shown[3] = str(model_dir), str(out_dir)
    return {"file": str(final), "bytes": final.stat().st_size, "seconds": round(seconds, 2),
            "command": " ".join(shown), "peak_rss_mb": proc.peak_rss_mb, "memory_check": memory}


_TIMING = re.compile(r"(load time|sample time|prompt eval time|eval time|total time)\s*=\s*([\d.]+) ms"
                     r"(?:\s*/\s*(\d+) (?:runs|tokens))?")


def repair_text(text: str) -> str:
    """Put llm-cli's output back into UTF-8 text.

    The SentencePiece export can hold only valid text, so a ByteLevel token that is part of
    a character (the first two bytes of 述, say) keeps its ByteLevel spelling (``è¿``), and
    llm-cli prints it that way; a byte token (<0xB0>) it prints as the raw byte, which on
    its own is not UTF-8 (kept here as a surrogate by ``errors="surrogateescape"``). Each
    run of such spellings and raw bytes is turned back into bytes and decoded; a run that
    does not decode (a real ``×`` or ``°`` in the text) stays as printed, raw bytes as U+FFFD.
    Without this, answers of the demo model read "上è¿�åı�子" instead of "上述句子".
    """
    from medwb.models.tokenizer import bytes_to_unicode
    byte_of = {c: b for b, c in bytes_to_unicode().items() if b >= 0x80 or ord(c) >= 0x100}

    def is_special(ch: str) -> bool:
        return ch in byte_of or 0xDC80 <= ord(ch) <= 0xDCFF

    out, i = [], 0
    while i < len(text):
        if not is_special(text[i]):
            out.append(text[i])
            i += 1
            continue
        j = i
        while j < len(text) and is_special(text[j]):
            j += 1
        run = text[i:j]
        raw = bytes(ord(ch) - 0xDC00 if 0xDC80 <= ord(ch) <= 0xDCFF else byte_of[ch] for ch in run)
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append("".join("\ufffd" if 0xDC80 <= ord(ch) <= 0xDCFF else ch for ch in run))
        i = j
    return "".join(out)


def run_cli(model_file, family: str, prompt: str, threads: int, n_predict: int = 64,
            ctx_size: int = 2048, kernel_build: str | None = None, timeout: float = 600,
            ignore_eos: bool = False) -> dict:
    """``llm-cli`` on a native file (greedy); returns text, timing lines, kernel build, command.

    With ``kernel_build`` the same executable llm-cli would start (libs/main-<family>) runs
    from a private copy whose kernel library is that build (see medwb.backends.toolchain.bigdl_kernels).
    """
    from medwb.backends.toolchain import bigdl_kernels
    args = ["-t", str(threads), "-n", str(n_predict), "-c", str(ctx_size), "-m", str(model_file),
            "--temp", "0", "--repeat-penalty", "1.0"] + (["--ignore-eos"] if ignore_eos else []) + ["-p", prompt]
    if kernel_build:
        exe = bigdl_kernels.shadow_libs(kernel_build) / f"main-{family}"
        cmd = [str(exe), *args]
    else:
        cmd = ["llm-cli", "-x", family, *args]
    # LD_DEBUG=files makes the dynamic loader name every library it opens: the kernel
    # build is read from that, not assumed.
    proc = _run(cmd, timeout, env={"LD_DEBUG": "files"}, errors="surrogateescape")
    out = proc.stdout
    opened = re.findall(r"opening file=(\S+lib" + family + r"_\w+\.so)", proc.stderr)
    err = "\n".join(line for line in proc.stderr.splitlines() if not re.match(r"\s*\d+:\s", line))
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-1:] or ["no output"]
        raise MedwbError(f"llm-cli failed on {model_file}: {tail[0]}")
    # llm-cli echoes its command line first, then the prompt, then the generated text.
    text = out.rsplit(prompt, 1)[1] if prompt in out else out  # llm-cli echoes its command first
    timings = {}
    for m in _TIMING.finditer(err):
        timings[m[1].replace(" ", "_") + "_ms"] = float(m[2])
        if m[3]:
            timings[m[1].replace(" ", "_") + "_count"] = int(m[3])
    system_info = next((line.split(":", 1)[1].strip() for line in err.splitlines()
                        if line.startswith("system_info")), "")
    return {"text": repair_text(text).strip(), "timings": timings, "system_info": system_info, "peak_rss_mb": proc.peak_rss_mb,
            "kernel_build": bigdl_kernels.build_of_library(opened[0]) if opened else None,
            "kernel_library": os.path.realpath(opened[0]) if opened else None,
            "command": " ".join(cmd[:-1] + [repr(prompt)])}
