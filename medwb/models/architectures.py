"""The model families MedWB knows: one entry per architecture, the one place that knows them.

A hospital brings a folder; its ``config.json`` says which architecture it is
(``model_type``, ``architectures``). Each entry here says, for its family:
- how to read the config into a :class:`Shape` (layers, heads, KV heads, head_dim, vocab,
  tied embeddings, biases), from which the parameter count, the bytes one generated token
  must read (the decode floor's numerator) and the KV cache per token follow;
- whether the family needs the model's own Python code (``trust_remote_code``);
- which routes take it, and for each one that does not, the measured reason (``routes``,
  keyed by the backends' names: ``medwb.backends`` reads it, through ``route_problem``);
- a tiny configuration (widths multiples of 64/128 so that quantizers skip no layer) for
  local test checkpoints, and the transformers class that builds it.

Nothing else in medwb assumes an architecture: an unknown one is refused with one line
naming those supported (``detect``). Routes' facts were measured on tiny checkpoints of each
family (tests/test_families.py); where a route's reason is a library's limit, it names the
library, its version here and what would lift it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from medwb.errors import MedwbError

# Every route the registry speaks of (the backends' names); a family lists only those that
# do NOT take it, each with why.
ROUTES = ("pytorch", "bigdl", "bigdl-cli", "ipex-llm", "openvino-optimum", "openvino-genai", "llama.cpp")


@dataclass(frozen=True)
class Shape:
    """What decoding one token costs, read from a config. Counts are parameters (weights),
    not bytes: multiply by the bytes per weight of the variant."""
    family: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    norms_per_layer: int = 2      # RMSNorm vectors of `hidden` per layer (glm4 has four)
    qk_norm: bool = False         # qwen3: a norm of `head_dim` on queries and on keys

    @property
    def embedding(self) -> int:
        return self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        """All weights; a tied table counted once."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * (q + 2 * kv) + q * self.hidden + ((q + 2 * kv) if self.qkv_bias else 0)
        per_layer = attention + 3 * self.hidden * self.intermediate + self.norms_per_layer * self.hidden \
            + (2 * self.head_dim if self.qk_norm else 0)
        return self.layers * per_layer + self.embedding * (1 if self.tied else 2) + self.hidden

    @property
    def read_per_token(self) -> int:
        """Weights read to generate one token: every weight once, except the input embedding
        table, of which one row is read; a tied table is read whole, as the output layer
        (for Qwen2.5-1.5B that is ~15% of the weights, 27% for Qwen2.5-0.5B)."""
        return self.parameters if self.tied else self.parameters - self.embedding + self.hidden

    @property
    def read_share(self) -> float:
        """``read_per_token`` / ``parameters``: scales an artifact's size to the bytes read."""
        return self.read_per_token / self.parameters

    def matmuls(self) -> list[tuple[int, int, int]]:
        """The weight matrices one generated token multiplies, as (inner dimension K, outputs N,
        how many per token): the compute floor's work (``medwb.bench.roofline``). Q, K, V and
        gate/up are counted as separate matrices; a runtime that fuses them does the same
        multiply-adds in fewer, wider calls."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        per_layer = [(self.hidden, q, 1), (self.hidden, kv, 2), (q, self.hidden, 1),
                     (self.hidden, self.intermediate, 2), (self.intermediate, self.hidden, 1)]
        return [(k, n, c * self.layers) for k, n, c in per_layer] + [(self.hidden, self.vocab, 1)]

    def kv_bytes_per_token(self, context_tokens: float, bytes_per_element: float) -> float:
        """Bytes of KV cache read to generate one token at a context of ``context_tokens``
        (grouped-query attention: the KV heads, not the query heads)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * context_tokens * bytes_per_element


def _hf_shape(family: str, cfg: dict, **kw) -> Shape:
    """The transformers-native names (llama, qwen2, qwen3, glm, glm4)."""
    heads = cfg["num_attention_heads"]
    return Shape(family=family, layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
                 intermediate=cfg["intermediate_size"], heads=heads,
                 kv_heads=cfg.get("num_key_value_heads") or heads,
                 head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab=cfg["vocab_size"],
                 tied=bool(cfg.get("tie_word_embeddings", False)), **kw)


def _chatglm_shape(cfg: dict) -> Shape:
    """ChatGLM2/3 and GLM-4 chat, remote-code format: their own key names."""
    heads = cfg["num_attention_heads"]
    return Shape(family="chatglm", layers=cfg["num_layers"], hidden=cfg["hidden_size"],
                 intermediate=cfg["ffn_hidden_size"], heads=heads,
                 kv_heads=cfg.get("multi_query_group_num", heads) if cfg.get("multi_query_attention") else heads,
                 head_dim=cfg.get("kv_channels") or cfg["hidden_size"] // heads,
                 vocab=cfg.get("padded_vocab_size") or cfg["vocab_size"], tied=False,
                 qkv_bias=bool(cfg.get("add_qkv_bias", True)))


# Why a route does not take a family; the same sentence for several families.
_BIGDL_OLD = "bigdl-llm 2.4 pins transformers 4.31, which predates this architecture (KeyError on its model_type)"
_BIGDL_431 = _BIGDL_OLD + "; its successor ipex-llm takes it (the ipex-llm route)"
_IPEX_447 = ("ipex-llm 2.2 runs on transformers 4.47 (ipex env), which predates this architecture (added in "
             "4.51), and its last release has no kernels for it (only nightlies); OpenVINO and llama.cpp take it")
_IPEX_QWEN2_UNFUSED = ("ipex-llm 2.2's fused Qwen2 attention calls the rotary embedding with seq_len, which "
                       "transformers 4.47 (ipex env) no longer takes (TypeError at generate, measured): it runs "
                       "with optimize_model=False, low-bit linear layers and transformers' own attention")
_LLM_CONVERT = "llm-convert/llm-cli convert llama, bloom, gptneox, starcoder and chatglm only"
_OPTIMUM_GLM = ("optimum-intel 2.2 refuses to export the native glm architecture under transformers newer than "
                "5.0 (the main env has 5.5.4: 'Maximum required is 5.0', measured); a GLM-4-0414 folder (glm4) "
                "exports, and llama.cpp takes this one")
# Baichuan2 folders (remote code, 7B layout: rotary; the routes' own code tells it by its
# vocabulary of 125,696 and its NormHead output layer).
_BAICHUAN_MAIN = ("its own code was written for transformers 4.29-4.33 (upstream reports: Baichuan2's tokenizer "
                  "breaks from 4.34) and the main env, where the PyTorch reference and the OpenVINO export run, "
                  "has 5.5; optimum-intel also exports baichuan only up to transformers 4.57. ipex-llm and "
                  "llama.cpp take it")
_BAICHUAN_IPEX = ("runs the folder's modeling code with ipex-llm 2.2's Baichuan2 handling (the NormHead output layer "
                  "normalised once on load) and low-bit linear layers; its fused attention is used at Baichuan2-7B's "
                  "width (2048 or 4096) only, so a tiny checkpoint checks the folder's own attention. Baichuan2's "
                  "tokenizer code breaks from transformers 4.34 (upstream reports; the main env has 5.5, ipex's "
                  "4.47): where it does, MedWB reads the folder's tokenizer.model itself (the same ids)")
_BAICHUAN_BIGDL = ("bigdl-llm 2.4 quantizes a Baichuan2 folder on load, but cannot load the low-bit folder it saves "
                   "(load_low_bit normalises the NormHead of a model built on the meta device: RuntimeError "
                   "set_data, measured), and MedWB converts once and loads the saved folder; ipex-llm 2.2 fixed "
                   "it: the ipex-llm route takes it")
_BAICHUAN_GGUF = ("llama.cpp's converter copies Baichuan2's NormHead output layer as stored and drops two settings "
                  "of its tokenizer.model (the chat markers' user-defined type, no leading space): MedWB mends all "
                  "three while converting; llama.cpp's Baichuan graph applies rotary positions only at the 7B's 32 "
                  "layers and ALiBi at the 13B's 40 (by depth): other depths are refused, and the 13B layout is not "
                  "checked here")


def _baichuan_depth(cfg: dict) -> str | None:
    layers = cfg.get("num_hidden_layers")
    if layers in (32, 40):
        return None
    return (f"llama.cpp's Baichuan graph picks its position encoding by depth (rotary at 32 layers, ALiBi at 40); "
            f"this folder's {layers} layers would decode with none (measured): use the bigdl or ipex-llm route")
# Baichuan2's chat format (its generation_utils: user_token_id 195, assistant_token_id 196 in
# generation_config.json, pieces <reserved_106> and <reserved_107>), for folders whose
# tokenizer_config.json has no chat template (Baichuan2's published ones have none).
_BAICHUAN_CHAT = ("{% for m in messages %}{% if m['role'] == 'user' %}<reserved_106>{{ m['content'] }}"
                  "{% elif m['role'] == 'assistant' %}<reserved_107>{{ m['content'] }}{{ eos_token }}"
                  "{% elif m['role'] == 'system' %}{{ m['content'] }}{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}<reserved_107>{% endif %}")
# ChatGLM2/3 and GLM-4 chat folders (remote code): what each environment's transformers allows.
_CHATGLM_MAIN = ("its own code is written for transformers 4.3x-4.4x (upstream reports: ChatGLM3's tokenizer "
                 "breaks from 4.45, GLM-4 chat's modeling from 4.49) and the main env, where the PyTorch reference "
                 "and the OpenVINO export run, has 5.5; optimum-intel also exports chatglm only under "
                 "transformers 4.51-4.55. bigdl-llm, ipex-llm and llama.cpp take it; the transformers-native "
                 "glm format of the same model (e.g. glm-4-9b-chat-hf) runs the PyTorch reference")
_CHATGLM_IPEX = ("runs the folder's modeling code on transformers 4.47 (ipex env) with ipex-llm's fused ChatGLM2/3 "
                 "kernels (a padded vocabulary of 65,024; GLM-4 chat's only at 28 or 40 layers, glm-4-9b); a folder "
                 "whose tokenizer is only ChatGLM3's own code needs transformers < 4.45 (upstream report), one "
                 "with tokenizer.json is read from it")
_CHATGLM_BIGDL = ("runs the folder's modeling code on transformers 4.31 (bigdl env: the versions ChatGLM2/3's own "
                  "code was written for) with bigdl-llm's fused ChatGLM2/3 kernels (a padded vocabulary of 65,024); "
                  "GLM-4 chat's own code was published for newer transformers than 4.31 (not checked: no such folder "
                  "offline); the ipex-llm route runs 4.47")
_CHATGLM_CLI = ("llm-convert's chatglm converter embeds ChatGLM2/3's own SentencePiece tokenizer (tokenizer.model, "
                "through the folder's tokenizer code) and llm-cli's ChatGLM graph has no rope_ratio (GLM-4 chat's "
                "would decode wrongly); no such folder is available offline to check it, so MedWB does not run it. "
                "The Intel route's Python API (bigdl, ipex-llm) takes these folders")
_CHATGLM_GGUF = ("the converter reads the folder's tokenizer through the folder's own code under the main env's "
                 "transformers 5.5; checked here on a folder whose tokenizer is tokenizer.json")
# The FP32 reference of a remote-code family (the folder's weights, converted exactly; its
# agreement with the folder's own code is checked in tests/test_families.py).
_F32_GGUF = "llama.cpp:f32"
TRUST_ENV = "MEDWB_TRUST_REMOTE_CODE"
CONSENT_NEEDED = ("these folders run their own Python code (the folder's modeling_*.py), which MedWB runs only "
                  "with your consent: read it, then pass --trust-remote-code (notebooks: trust_remote_code=True)")
_CONSENT = "with --trust-remote-code only (the folder's own Python code runs)"


def remote_code_trusted() -> bool:
    """Whether the user consented to running a model folder's own Python code in this run
    (``--trust-remote-code``, a notebook's ``trust_remote_code``): inherited by every child
    process the run starts, so a conversion or a worker in another environment sees it too."""
    return os.environ.get(TRUST_ENV) == "1"


def trust_remote_code(allow: bool = True) -> None:
    """Record (or withdraw) that consent for this process and the processes it starts."""
    if allow:
        os.environ[TRUST_ENV] = "1"
    else:
        os.environ.pop(TRUST_ENV, None)


def trust_kwargs() -> dict:
    """What transformers' ``from_pretrained`` is given: ``trust_remote_code=True`` only with
    the user's consent (a folder without its own code ignores it)."""
    return {"trust_remote_code": True} if remote_code_trusted() else {}


@dataclass(frozen=True)
class Architecture:
    name: str                             # the family, as records and docs name it
    title: str                            # what hospitals call it
    model_types: tuple[str, ...]          # config.json "model_type" values
    classes: tuple[str, ...]              # config.json "architectures" values
    read: Callable[[dict], Shape]
    remote_code: bool = False
    not_taken: dict[str, str] = field(default_factory=dict)   # route -> why it does not take it
    # route -> why the route runs this family without its fused attention/rotary kernels
    # (it still decodes correctly; slower): ipex-llm loads it with optimize_model=False.
    unfused: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, str] = field(default_factory=dict)  # route -> what a folder must also meet
    # route -> the check of that condition on a folder's config (None: met; else why not)
    checks: dict[str, Callable[[dict], str | None]] = field(default_factory=dict)
    transformers_class: str = ""          # builds tiny checkpoints (native families)
    tiny: dict = field(default_factory=dict)
    # Special tokens every real folder of the family carries and a converter looks up by name
    # (llama.cpp's GLM converter: <|endoftext|>, <|user|>): added to a tiny checkpoint's tokenizer.
    special_tokens: tuple[str, ...] = ()
    # The input token table's weight (name suffix) and the output layer's (name part), as a
    # converted artifact keeps them: the floor reads one row of the first (medwb.backends).
    embedding_weight: str = "embed_tokens.weight"
    output_weight: str = "lm_head"
    # Whether the output layer's rows are L2-normalised before use (Baichuan2's NormHead), for
    # a config: a converter that copies the weight as stored must normalise it.
    normalized_output: Callable[[dict], bool] | None = None
    # "demo": a tiny checkpoint carries the demo tokenizer (tokenizer.json); "sentencepiece":
    # a tokenizer.model and the family's tokenizer code, as its real folders do.
    tokenizer: str = "demo"
    # The family's published chat format, for folders whose tokenizer_config.json has none
    # (medwb.models.chat), and the pieces it names (a tiny tokenizer carries them).
    chat_template: str = ""
    chat_tokens: tuple[str, ...] = ()
    # The variant that stands for FP32 where PyTorch cannot run the family here (its own code
    # needs older transformers): llama.cpp's F32 GGUF, the folder's weights unchanged
    # (medwb.backends.registry.reference_for).
    reference: str = ""

    def route_problem(self, route: str, trusted: bool | None = None) -> str | None:
        """Why ``route`` does not take this family (None: it does). A family that runs its
        own code is refused on every route until the user consents (``trusted``: that
        consent; None reads it from the run, ``remote_code_trusted``)."""
        if route not in ROUTES:
            raise MedwbError(f"route {route!r} is unknown to the architecture registry: use one of "
                             f"{', '.join(ROUTES)}")
        why = self.not_taken.get(route)
        if why or not self.remote_code or (remote_code_trusted() if trusted is None else trusted):
            return why
        return CONSENT_NEEDED


# Tiny checkpoints: 2 layers, 4 heads, 2 KV heads (grouped-query), widths multiples of 128.
_TINY = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
         "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}

ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in [
    Architecture(
        "llama", "Llama 2 / 3.x (and fine-tunes; MHA or grouped-query)", ("llama",), ("LlamaForCausalLM",),
        lambda c: _hf_shape("llama", c),
        conditions={"bigdl": "Llama 2 and others with RoPE base 10000 only: transformers 4.31 (bigdl env) has no "
                             "rope_theta, so Llama-3's 500000 would decode wrongly and is refused",
                    "bigdl-cli": "llm-cli's llama loader takes full multi-head attention at the depths it knows "
                                 "(26 layers and up, or the demo model's) and reads pytorch_model.bin: "
                                 "`medwb doctor --model` says for a folder"},
        transformers_class="LlamaForCausalLM",
        tiny={**_TINY, "model_type": "llama", "rope_theta": 500000.0, "tie_word_embeddings": False}),
    Architecture(
        "qwen2", "Qwen2 / Qwen2.5 (and DeepSeek-R1-Distill-Qwen)", ("qwen2",), ("Qwen2ForCausalLM",),
        lambda c: _hf_shape("qwen2", c, qkv_bias=True),
        not_taken={"bigdl": _BIGDL_431, "bigdl-cli": _LLM_CONVERT},
        unfused={"ipex-llm": _IPEX_QWEN2_UNFUSED}, conditions={"ipex-llm": _IPEX_QWEN2_UNFUSED},
        transformers_class="Qwen2ForCausalLM",
        tiny={**_TINY, "model_type": "qwen2", "rope_theta": 1000000.0, "tie_word_embeddings": True}),
    Architecture(
        "qwen3", "Qwen3", ("qwen3",), ("Qwen3ForCausalLM",),
        lambda c: _hf_shape("qwen3", c, qk_norm=True),
        not_taken={"bigdl": _BIGDL_OLD, "bigdl-cli": _LLM_CONVERT, "ipex-llm": _IPEX_447},
        transformers_class="Qwen3ForCausalLM",
        tiny={**_TINY, "model_type": "qwen3", "head_dim": 64, "rope_theta": 1000000.0,
              "tie_word_embeddings": True}),
    Architecture(
        "glm", "GLM-4 (transformers-native `glm` format, e.g. glm-4-9b-chat-hf)", ("glm",), ("GlmForCausalLM",),
        lambda c: _hf_shape("glm", c, qkv_bias=bool(c.get("attention_bias", True))),
        not_taken={"bigdl": _BIGDL_431, "bigdl-cli": _LLM_CONVERT, "openvino-optimum": _OPTIMUM_GLM,
                   "openvino-genai": _OPTIMUM_GLM},
        transformers_class="GlmForCausalLM",
        special_tokens=("<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|observation|>"),
        tiny={**_TINY, "model_type": "glm", "head_dim": 32, "attention_bias": True, "partial_rotary_factor": 0.5,
              "tie_word_embeddings": False}),
    Architecture(
        "glm4", "GLM-4-0414 (transformers-native `glm4` format)", ("glm4",), ("Glm4ForCausalLM",),
        lambda c: _hf_shape("glm4", c, qkv_bias=bool(c.get("attention_bias", True)), norms_per_layer=4),
        not_taken={"bigdl": _BIGDL_OLD, "bigdl-cli": _LLM_CONVERT, "ipex-llm": _IPEX_447},
        transformers_class="Glm4ForCausalLM",
        special_tokens=("<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|observation|>"),
        tiny={**_TINY, "model_type": "glm4", "head_dim": 32, "attention_bias": True, "partial_rotary_factor": 0.5,
              "tie_word_embeddings": False}),
    Architecture(
        "chatglm", "ChatGLM2/3, GLM-4 chat (remote-code `chatglm` format; the case study's ChatGLM-6B lineage)",
        ("chatglm",), ("ChatGLMModel", "ChatGLMForConditionalGeneration"), _chatglm_shape, remote_code=True,
        not_taken={"pytorch": _CHATGLM_MAIN, "openvino-optimum": _CHATGLM_MAIN, "openvino-genai": _CHATGLM_MAIN,
                   "bigdl-cli": _CHATGLM_CLI},
        conditions={"bigdl": _CHATGLM_BIGDL, "ipex-llm": _CHATGLM_IPEX, "llama.cpp": _CHATGLM_GGUF},
        embedding_weight="embedding.word_embeddings.weight", output_weight="output_layer", reference=_F32_GGUF,
        special_tokens=("<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|observation|>"),
        # ChatGLM3's padded vocabulary (ipex-llm picks its ChatGLM2/3 kernels by it), two KV
        # groups, rotary on half of each 32-wide head with GLM-4's base ratio.
        tiny={"model_type": "chatglm", "num_layers": 2, "hidden_size": 128, "ffn_hidden_size": 384,
              "kv_channels": 32, "num_attention_heads": 4, "multi_query_attention": True,
              "multi_query_group_num": 2, "padded_vocab_size": 65024, "vocab_size": 65024, "seq_length": 1024,
              "layernorm_epsilon": 1e-5, "rmsnorm": True, "post_layer_norm": True, "add_bias_linear": False,
              "add_qkv_bias": True, "original_rope": True, "apply_residual_connection_post_layernorm": False,
              "rope_ratio": 500.0, "use_cache": True,
              "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                           "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration",
                           "AutoModelForCausalLM": "modeling_chatglm.ChatGLMForConditionalGeneration"},
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}),
    Architecture(
        "baichuan", "Baichuan2 (remote code, 7B layout)", ("baichuan",), ("BaichuanForCausalLM",),
        lambda c: _hf_shape("baichuan", c), remote_code=True,
        not_taken={"pytorch": _BAICHUAN_MAIN, "openvino-optimum": _BAICHUAN_MAIN, "openvino-genai": _BAICHUAN_MAIN,
                   "bigdl": _BAICHUAN_BIGDL, "bigdl-cli": _LLM_CONVERT},
        conditions={"ipex-llm": _BAICHUAN_IPEX,
                    "llama.cpp": _BAICHUAN_GGUF},
        checks={"llama.cpp": _baichuan_depth},
        normalized_output=lambda c: c.get("vocab_size") == 125696, tokenizer="sentencepiece", reference=_F32_GGUF,
        chat_template=_BAICHUAN_CHAT, chat_tokens=("<reserved_106>", "<reserved_107>"),
        # Baichuan2's vocabulary (the routes' Baichuan2 code recognises the family by it), full
        # multi-head attention and the 7B's 32 layers: llama.cpp picks Baichuan's rotary graph
        # by that depth (at 2 layers it applies no position encoding at all: measured).
        tiny={**_TINY, "model_type": "baichuan", "num_hidden_layers": 32, "num_key_value_heads": 4,
              "vocab_size": 125696,
              "rms_norm_eps": 1e-6, "pad_token_id": 0, "tie_word_embeddings": False, "model_max_length": 1024,
              "auto_map": {"AutoConfig": "configuration_baichuan.BaichuanConfig",
                           "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"}}),
]}


def supported() -> str:
    return ", ".join(f"{a.name} ({'/'.join(a.classes)})" for a in ARCHITECTURES.values())


def of_config(cfg: dict, where: str = "config.json") -> Architecture:
    """The family of a config (its model_type, else its architectures class); an unknown
    one is refused in one line naming those supported."""
    model_type = cfg.get("model_type")
    for arch in ARCHITECTURES.values():
        if model_type in arch.model_types:
            return arch
    classes = cfg.get("architectures") or []
    for arch in ARCHITECTURES.values():
        if any(c in arch.classes for c in classes):
            return arch
    raise MedwbError(f"{where}: architecture {model_type or '?'} ({', '.join(classes) or 'no architectures'}) "
                     f"is not supported; MedWB knows {supported()}")


def detect(model_dir) -> Architecture:
    """The family of a checkpoint folder (its config.json)."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MedwbError(f"model '{model_dir}': no readable config.json ({type(e).__name__}): give a "
                         "Hugging Face checkpoint folder") from None
    return of_config(cfg, str(path))


def known(model_dir) -> Architecture | None:
    """The family of a folder, or None where it has no readable config or an unknown one
    (an artifact, a placeholder): for callers that fall back to a default."""
    try:
        return detect(model_dir)
    except MedwbError:
        return None


def shape(cfg: dict) -> Shape:
    """The config's :class:`Shape` (its family's reader)."""
    arch = of_config(cfg)
    try:
        return arch.read(cfg)
    except KeyError as e:
        raise MedwbError(f"config.json of a {arch.name} model lacks {e.args[0]!r}: is the folder complete?") from None


def weight_names(model_dir) -> tuple[str, str]:
    """(input table suffix, output layer part) of the weight names in a checkpoint or an
    artifact made from it (its config.json); Llama's when the family is not known."""
    arch = known(model_dir) or Architecture
    return arch.embedding_weight, arch.output_weight


def route_problem(model_dir, route: str, trusted: bool | None = None) -> str | None:
    """Why ``route`` cannot take the checkpoint's family (None: it can); ``trusted`` as
    :meth:`Architecture.route_problem` takes it."""
    arch = detect(model_dir)
    why = arch.route_problem(route, trusted)
    if not why and route in arch.checks:
        why = arch.checks[route](json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")))
    return f"{arch.name} models: {why}" if why else None


def matrix_markdown() -> str:
    """The family x route table of docs/bring-your-own-model.md, from this registry (a test
    keeps the page equal to it: ``python -m medwb.models.architectures`` prints it)."""
    notes: dict[str, int] = {}
    head = "| family | " + " | ".join(ROUTES) + " |"
    lines = [head, "|" + "---|" * (len(ROUTES) + 1)]
    for arch in ARCHITECTURES.values():
        cells = []
        for route in ROUTES:  # as with the user's consent; the consent itself is a note of its own
            why = arch.route_problem(route, trusted=True)
            note = why or "; ".join(filter(None, (_CONSENT if arch.remote_code else "", arch.conditions.get(route))))
            n = notes.setdefault(note, len(notes) + 1) if note else None
            cells.append(("no" if why else "yes") + (f" ({n})" if n else ""))
        lines.append(f"| {arch.name}: {arch.title} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"({n}) {why}." for why, n in notes.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(matrix_markdown())
