"""The demo model's tokenizer: ByteLevel BPE trained with `tokenizers` on the corpus.

Why it is shaped like this:
- ByteLevel BPE: openvino_tokenizers converts it with ids identical to Hugging Face
  (a Metaspace/SentencePiece-style tokenizer.json did not convert), so the
  openvino-genai route works.
- Vocabulary order: <unk>=0, <s>=1, </s>=2, then the 256 single bytes in byte order
  (ids 3..258), then merges. That is the Llama/SentencePiece layout, which llama.cpp-style
  runtimes (bigdl's llm-cli) assume for byte fallback.
- No added chat tokens: the chat template uses plain-text role markers, so any runtime
  that only knows <s> and </s> tokenizes a prompt the same way.
- Files are written in the format both tokenizers 0.13 (transformers 4.31, the bigdl
  env) and tokenizers 0.2x (transformers 5, the main env) read: merges as "a b" strings,
  tokenizer_class PreTrainedTokenizerFast, chat template in tokenizer_config.json.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from medwb.tasks.prompts import CHAT_TEMPLATE

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
SPECIAL_TOKENS = [UNK, BOS, EOS]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by ByteLevel BPE."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a ByteLevel BPE tokenizer and return it as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    raw = json.loads(tok.to_str())

    # Re-number: specials, then the 256 bytes in byte order, then merged tokens in the
    # order the trainer created them.
    old_vocab: dict[str, int] = raw["model"]["vocab"]
    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    order = SPECIAL_TOKENS + byte_chars + [t for t, _ in sorted(old_vocab.items(), key=lambda kv: kv[1])
                                           if t not in SPECIAL_TOKENS and t not in byte_chars]
    vocab = {t: i for i, t in enumerate(order)}
    merges = [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])])
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def _legacy_tokenizer_json(tok) -> dict:
    """tokenizer.json readable by tokenizers 0.13 as well as current releases."""
    data = json.loads(tok.to_str())
    model = data["model"]
    model["merges"] = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    # Keys newer than tokenizers 0.13 (their defaults match the old behaviour).
    model.pop("ignore_merges", None)
    return data


def save_tokenizer(tok, out_dir: Path, model_max_length: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(
        json.dumps(_legacy_tokenizer_json(tok), ensure_ascii=False, indent=1), encoding="utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS,
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "left",
        # Without this, transformers 4.31 also returns token_type_ids, which a Llama
        # model's generate() rejects.
        "model_input_names": ["input_ids", "attention_mask"],
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, ensure_ascii=False, indent=2), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": EOS}, indent=2),
        encoding="utf-8")
