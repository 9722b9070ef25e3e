"""Random-weight checkpoints of real model shapes, for speed measurements only.

No model hub is reachable, but decode speed does not depend on weight values when the
output length is forced: a checkpoint with a real model's shape and random weights runs
exactly the same kernels on the same amount of memory. Its text is meaningless, so every
such checkpoint carries ``"medwb_speed_only": true`` in its config.json, and every record
made from it says so. The demo model's tokenizer is reused (its ids fit any vocabulary).

Built once per shape into the medwb cache (``<cache>/shapes/<name>``), atomically, one
safetensors shard at a time from a model laid out on torch's meta device: memory holds one
shard, never the model, so a 7-9 B shape is built on a machine whose RAM could not hold
its FP32 copy. The large presets are built in bfloat16, as their publishers ship them.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import atomic_dir, build_lock, cache_dir

_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
          "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "vocab_size": 32000, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
          "pad_token_id": 2}
# The families' published configs (their config.json on the hub, read 2026-12), the fields
# that set the shape; the rest are transformers' defaults.
_QWEN = {"hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "vocab_size": 151936,
         "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
SHAPES = {
    # TinyLlama-1.1B: 22 layers, grouped-query attention (4 KV heads).
    "tinyllama-1.1b": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
                       "num_attention_heads": 32, "num_key_value_heads": 4},
    # A 26-layer full multi-head-attention llama (1.34B without embeddings, 1.47B with):
    # the smallest llama shape llm-cli's loader accepts, so the CLI route can be measured.
    "llama-26l-1.3b": {**_LLAMA, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 26,
                       "num_attention_heads": 16, "num_key_value_heads": 16},
    # Llama-2-7B: 13.5 GB in bfloat16 (27 GB in FP32, more than a 24 GiB machine holds).
    "llama2-7b": {**_LLAMA, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 4096,
                  "torch_dtype": "bfloat16"},
    # Llama-3.2-3B: grouped-query (8 KV heads), tied embeddings, a 128k vocabulary.
    "llama3.2-3b": {**_LLAMA, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                    "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
                    "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 8192,
                    "torch_dtype": "bfloat16"},
    # Qwen2.5-1.5B(-Instruct): tied embeddings (15% of its weights), 2 KV heads, qkv bias.
    "qwen2.5-1.5b": {**_QWEN, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 1536,
                     "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                     "num_key_value_heads": 2, "max_position_embeddings": 32768},
    # Qwen3-1.7B: head_dim 128 with 16 query and 8 KV heads, q/k norms, tied embeddings.
    "qwen3-1.7b": {**_QWEN, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": 2048,
                   "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960},
    # GLM-4-9B (the transformers-native glm format of glm-4-9b-chat-hf): 2 KV heads, qkv
    # bias, half-dimension rotary; 18.8 GB in bfloat16 (38 GB in FP32).
    "glm-4-9b": {"model_type": "glm", "architectures": ["GlmForCausalLM"], "hidden_act": "silu",
                 "hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 40,
                 "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128, "vocab_size": 151552,
                 "attention_bias": True, "partial_rotary_factor": 0.5, "rms_norm_eps": 1.5625e-07,
                 "rope_theta": 10000.0, "max_position_embeddings": 131072, "tie_word_embeddings": False,
                 "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "torch_dtype": "bfloat16"},
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SHARD_BYTES = 1 << 30  # written and freed one at a time: the build's memory
INIT_STD = 0.02  # transformers' initializer_range for every family here


def parameter_count(config: dict) -> int:
    from medwb.models import architectures
    return architectures.shape(config).parameters


def build(arch, config: dict):
    """A random-weight transformers model of ``arch`` (a native family) with ``config``
    (on the meta device, no memory, when built inside ``torch.device("meta")``)."""
    import transformers
    if not arch.transformers_class:
        raise MedwbError(f"{arch.name} models need their own code (remote code): no random-weight checkpoint "
                         "of them is built here")
    model_class = getattr(transformers, arch.transformers_class)
    config_class = transformers.AutoConfig.for_model(config["model_type"]).__class__
    skip = ("architectures", "model_type", "torch_dtype")
    return model_class(config_class(**{k: v for k, v in config.items() if k not in skip}))


def _random_tensor(name: str, shape, dtype):
    """What transformers' own init gives a tensor of this name: norms' weights 1, biases 0,
    every other weight N(0, 0.02); speed does not depend on the values."""
    import torch
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in name.rsplit(".", 2)[-2]:
        return torch.ones(shape, dtype=dtype)
    return (torch.randn(shape, dtype=torch.float32) * INIT_STD).to(dtype)


def write_streamed(model, out_dir: Path, dtype: str) -> int:
    """The random weights of ``model`` (laid out on the meta device) as sharded safetensors
    in ``dtype``, each shard made, written and freed before the next; a tied table once
    (as save_pretrained writes it). Returns the bytes written."""
    import torch
    from safetensors.torch import save_file
    torch_dtype = getattr(torch, dtype)
    every = dict(model.named_parameters(remove_duplicate=False))
    unique = dict(model.named_parameters())  # a tied output layer is the input table
    buffers = [k for k in model.state_dict() if k not in every]
    if buffers:  # none of the native families has persistent buffers; never guess their values
        raise MedwbError(f"random weights for {type(model).__name__}: persistent buffers {buffers[:3]} not built")
    names = sorted(unique, key=lambda n: (not n.startswith("model.embed"), n))
    shards, current, size = [], {}, 0
    for name in names:
        nbytes = unique[name].numel() * torch_dtype.itemsize
        if current and size + nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[name] = tuple(unique[name].shape)
        size += nbytes
    shards.append(current)
    total, weight_map = 0, {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors" if len(shards) > 1 else "model.safetensors"
        tensors = {n: _random_tensor(n, s, torch_dtype) for n, s in shard.items()}
        save_file(tensors, str(out_dir / fname), metadata={"format": "pt"})
        os.chmod(out_dir / fname, 0o644)  # safetensors writes 0600; other users' runs read the cache
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({n: fname for n in shard})
        del tensors
    if len(shards) > 1:
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
    return total


# Why neither fidelity nor the evaluation judges such a model (both say it so).
SPEED_ONLY_WHY = ("a random-weight model (speed only): its figures order the precisions, but no bar applies "
                  "to a model whose next-token distribution means nothing")


def is_speed_only(model_dir) -> bool:
    try:
        return bool(json.loads((Path(model_dir) / "config.json").read_text()).get("medwb_speed_only"))
    except (OSError, ValueError):
        return False


def ensure(name: str, with_bin: bool = False, log=print) -> Path:
    """The checkpoint of shape ``name``, built on first use (safetensors in the preset's
    dtype, FP32 unless it says otherwise; plus pytorch_model.bin with ``with_bin``: the
    caller knows whether a converter needs it). A build of another dtype is built again."""
    if name not in SHAPES:
        raise MedwbError(f"model shape {name!r} is unknown; use one of {', '.join(SHAPES)}")
    config = SHAPES[name]
    dtype = config.get("torch_dtype", "float32")
    out = cache_dir() / "shapes" / name
    params = parameter_count(config)
    with build_lock(out.parent / f".{name}.lock", f"waiting: another process is building model shape {name!r}", log):
        try:  # read under the lock: the process we waited for may have built it
            built = json.loads((out / "medwb_shape.json").read_text())
        except (OSError, ValueError):
            built = {}
        if built.get("dtype", "float32") != dtype or built.get("shape") != name:
            log(f"building random-weight checkpoint '{name}' ({params / 1e9:.2f} B parameters, {dtype}, speed only) ...")
            _build(name, config, dtype, params, out)
        if with_bin and not (out / "pytorch_model.bin").exists():
            _add_bin(name, out, log)
    return out


def _build(name: str, config: dict, dtype: str, params: int, out: Path) -> None:
    import torch

    from medwb.models import architectures, demo_model
    arch = architectures.of_config(config)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = build(arch, config)
    demo = demo_model.ensure()
    with atomic_dir(out, overwrite=True) as tmp:
        nbytes = write_streamed(model, tmp, dtype)
        demo_model.write_config(model, tmp, dtype)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg.update(medwb_speed_only=True, medwb_shape=name)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        write_tokenizer(arch, demo, tmp)
        (tmp / "medwb_shape.json").write_text(json.dumps({"shape": name, "parameters": params, "dtype": dtype,
                                                          "bytes": nbytes, "speed_only": True}))


def _add_bin(name: str, out: Path, log) -> None:
    """pytorch_model.bin beside the shards (llm-convert reads only it): torch.save holds the
    whole state dict, so RAM is checked for it first; written to a temporary name, renamed."""
    import torch
    from safetensors.torch import load_file

    from medwb.paths import checkpoint_bytes
    from medwb.sysinfo import check_ram
    check_ram(int(checkpoint_bytes(out) * 1.2), f"writing pytorch_model.bin for model shape {name!r}", "its weights, +20%",
              "use a smaller shape or a larger machine")
    log(f"writing pytorch_model.bin for '{name}' (llm-convert reads only it) ...")
    state = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(str(f)))
    tmp = out / f".pytorch_model.bin.tmp-{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, out / "pytorch_model.bin")
    finally:
        tmp.unlink(missing_ok=True)


def write_tokenizer(arch, demo: Path, out: Path) -> int:
    """The demo model's tokenizer into ``out``, with the special tokens every real folder of
    ``arch``'s family carries (llama.cpp's GLM converter looks them up by name), appended to
    its tokenizer.json as added tokens. The files are edited, not re-saved through the main
    env's transformers, whose newer tokenizer.json the bigdl env's tokenizers cannot parse.
    Returns the number of token ids (the highest + 1): what the model's vocabulary must hold."""
    for f in TOKENIZER_FILES:
        shutil.copy2(demo / f, out / f)
    tok = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    next_id = 1 + max([*tok["model"]["vocab"].values(), *(t["id"] for t in tok["added_tokens"])])
    if not arch.special_tokens:
        return next_id
    known = {t["content"] for t in tok["added_tokens"]}
    for content in arch.special_tokens:
        if content in known:
            continue
        tok["added_tokens"].append({"id": next_id, "content": content, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
        next_id += 1
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False, indent=2), encoding="utf-8")
    cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["additional_special_tokens"] = list(arch.special_tokens)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    return next_id


def write_sentencepiece_tokenizer(arch, out: Path, vocab_size: int) -> int:
    """A SentencePiece tokenizer.model, as a folder of ``arch``'s family ships it (Baichuan2's:
    byte fallback, digits split, no dummy prefix, no BOS added), trained on the demo corpus
    and filled up to ``vocab_size`` with user-defined ``<reserved_N>`` pieces (the family's
    chat markers among them), so that every id the model can emit decodes; with the family's
    tokenizer code, tokenizer_config.json and generation_config.json's chat token ids.
    Returns the number of token ids."""
    import io
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from medwb.models import demo_model, remote_code
    texts = [prompt + answer for prompt, answer in demo_model.training_texts()[:3000]]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buf, vocab_size=4000,
                                   model_type="bpe", character_coverage=0.9995, byte_fallback=True,
                                   split_digits=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
                                   normalization_rule_name="identity", add_dummy_prefix=False,
                                   remove_extra_whitespaces=False)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    n = 0
    while len(proto.pieces) < vocab_size:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = f"<reserved_{n}>", 0.0, piece.USER_DEFINED
        n += 1
    missing = [t for t in arch.chat_tokens if t not in {p.piece for p in proto.pieces}]
    if missing:
        raise MedwbError(f"a tiny {arch.name} vocabulary of {vocab_size} lacks {', '.join(missing)}")
    (out / "tokenizer.model").write_bytes(proto.SerializeToString())
    sp = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    for f in sorted(remote_code.code_dir(arch.name).glob("tokenization_*.py")):
        cls = "".join(w.capitalize() for w in f.stem.split("_")[1:]) + "Tokenizer"
        auto = {"AutoTokenizer": [f"{f.stem}.{cls}", None]}
        config = {"tokenizer_class": cls, "auto_map": auto, "add_bos_token": False, "add_eos_token": False,
                  "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
                  "model_max_length": arch.tiny.get("model_max_length", 1024), "clean_up_tokenization_spaces": False}
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    chat = dict(zip(("user_token_id", "assistant_token_id"), map(sp.piece_to_id, arch.chat_tokens)))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, **chat}, indent=2), encoding="utf-8")
    return sp.get_piece_size()


def tiny(family: str, log=print) -> Path:
    """A tiny random-weight checkpoint of ``family`` (medwb.models.architectures: 2 layers,
    grouped-query, widths multiples of 128), with the demo model's tokenizer, built once
    into the cache (``<cache>/tiny/<family>``): what the tests and the route matrix run
    every route on. Speed only, like the shapes. A remote-code family's folder carries the
    modeling code written for it here (medwb.models.remote_code)."""
    from medwb.models import architectures, remote_code
    arch = architectures.ARCHITECTURES.get(family)
    if arch is None or not (arch.transformers_class or remote_code.code_dir(family)):
        buildable = [a.name for a in architectures.ARCHITECTURES.values()
                     if a.transformers_class or remote_code.code_dir(a.name)]
        raise MedwbError(f"family {family!r}: tiny checkpoints are built for {', '.join(buildable)} (a remote-code "
                         "family needs its own code)")
    out = cache_dir() / "tiny" / family
    if (out / "medwb_shape.json").exists():
        return out
    with build_lock(out.parent / f".{family}.lock", f"waiting: another process is building the tiny {family} folder",
                    log):
        if not (out / "medwb_shape.json").exists():  # the process we waited for may have built it
            _build_tiny(family, arch, out, log)
    return out


def _build_tiny(family: str, arch, out: Path, log) -> None:
    import torch

    from medwb.models import architectures, demo_model
    demo = demo_model.ensure()
    with atomic_dir(out, overwrite=True) as tmp:
        # The tokenizer first (with the special tokens a real folder of the family carries):
        # its ids set the vocabulary, rounded up to a multiple of 64.
        if arch.tokenizer == "sentencepiece":
            n_tokens = write_sentencepiece_tokenizer(arch, tmp, arch.tiny["vocab_size"])
        else:
            n_tokens = write_tokenizer(arch, demo, tmp)
        config = {"vocab_size": -(-n_tokens // 64) * 64, **arch.tiny, "architectures": list(arch.classes[:1])}
        parameters = architectures.shape(config).parameters
        log(f"building a tiny random-weight {family} checkpoint ({parameters:,} parameters)")
        torch.manual_seed(0)
        if arch.transformers_class:
            model = build(arch, config)
            model.eval()
            demo_model.save_checkpoint(model, tmp, with_bin=False)
            cfg = json.loads((tmp / "config.json").read_text())
        else:
            cfg = _write_remote_code_tiny(family, config, tmp)
        cfg.update(medwb_speed_only=True, medwb_shape=f"tiny-{family}")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        (tmp / "medwb_shape.json").write_text(json.dumps({"shape": f"tiny-{family}", "speed_only": True,
                                                          "parameters": parameters}))


def _write_remote_code_tiny(family: str, config: dict, out: Path) -> dict:
    """A remote-code family's tiny folder: its modeling files (written here), random FP32
    weights under the names they load, and the config that maps transformers' Auto classes
    to them (``auto_map``, as a real folder's does). Returns the config."""
    import torch
    from safetensors.torch import save_file
    from medwb.models import remote_code
    code = remote_code.code_dir(family)
    for f in sorted(code.glob("*.py")):
        shutil.copy2(f, out / f.name)
    tensors = {n: _random_tensor(n, s, torch.float32) for n, s in remote_code.tensors(family, config).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    os.chmod(out / "model.safetensors", 0o644)
    return {**config, "torch_dtype": "float32"}
