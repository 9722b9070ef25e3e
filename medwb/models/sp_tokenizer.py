"""A SentencePiece folder's tokenizer read by MedWB itself, when the folder's own code cannot be run.

Some remote-code families ship only ``tokenizer.model`` and a Python class that reads it
(Baichuan2's ``BaichuanTokenizer``). That class was written for transformers 4.29-4.33: it
loads the SentencePiece model after calling the base class's ``__init__``, which asks for the
vocabulary from 4.34 on (AttributeError: sp_model, upstream reports), so it fails in the main
env (5.5) and the ipex env (4.47). Its behaviour is the SentencePiece model's own plus the
``add_bos_token``/``add_eos_token`` flags of tokenizer_config.json, so MedWB reads those
(:func:`load`): the same ids as the folder's class (tests/test_families.py checks it on a
Baichuan2-layout folder), without running its code. Works on transformers 4.31, 4.47 and 5.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from medwb.errors import MedwbError

FILE = "tokenizer.model"


def available(model_dir) -> bool:
    return (Path(model_dir) / FILE).is_file()


def load(model_dir):
    """The folder's SentencePiece tokenizer with its tokenizer_config.json's special tokens,
    BOS/EOS flags and chat template; left padding, as MedWB's other tokenizers."""
    import sentencepiece as spm
    from transformers import PreTrainedTokenizer

    class SentencePieceTokenizer(PreTrainedTokenizer):
        vocab_files_names = {"vocab_file": FILE}
        model_input_names = ["input_ids", "attention_mask"]

        def __init__(self, vocab_file, add_bos_token=False, add_eos_token=False, **kwargs):
            self.vocab_file, self.add_bos_token, self.add_eos_token = vocab_file, add_bos_token, add_eos_token
            self.sp = spm.SentencePieceProcessor(model_file=vocab_file)  # before the base class asks for it
            super().__init__(**kwargs)

        @property
        def vocab_size(self):
            return self.sp.get_piece_size()

        def get_vocab(self):
            return {**{self.sp.id_to_piece(i): i for i in range(self.vocab_size)}, **self.added_tokens_encoder}

        def _tokenize(self, text, **kwargs):
            return self.sp.encode(text, out_type=str)

        def _convert_token_to_id(self, token):
            return self.sp.piece_to_id(token)

        def _convert_id_to_token(self, index):
            return self.sp.id_to_piece(index)

        def convert_tokens_to_string(self, tokens):
            return self.sp.decode_pieces(tokens)

        def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
            bos = [self.bos_token_id] if self.add_bos_token else []
            eos = [self.eos_token_id] if self.add_eos_token else []
            return bos + token_ids_0 + eos + ((bos + token_ids_1 + eos) if token_ids_1 is not None else [])

        def save_vocabulary(self, save_directory, filename_prefix=None):
            out = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + FILE)
            if os.path.abspath(self.vocab_file) != os.path.abspath(out):
                shutil.copyfile(self.vocab_file, out)
            return (out,)

    folder = Path(model_dir)
    if not available(folder):
        raise MedwbError(f"model '{folder}': no {FILE} to read the tokenizer from")
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}

    def token(key, default):
        value = cfg.get(key, default)
        return value.get("content") if isinstance(value, dict) else value
    tokenizer = SentencePieceTokenizer(
        str(folder / FILE), add_bos_token=bool(cfg.get("add_bos_token", False)),
        add_eos_token=bool(cfg.get("add_eos_token", False)), bos_token=token("bos_token", "<s>"),
        eos_token=token("eos_token", "</s>"), unk_token=token("unk_token", "<unk>"), pad_token=token("pad_token", None),
        model_max_length=cfg.get("model_max_length", 4096), clean_up_tokenization_spaces=False)
    if cfg.get("chat_template"):
        tokenizer.chat_template = cfg["chat_template"]
    tokenizer.padding_side = "left"
    return tokenizer
