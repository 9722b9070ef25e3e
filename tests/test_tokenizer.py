"""The demo tokenizer: one chat format everywhere, readable by both stacks and OpenVINO."""

from medwb.tasks import corpus, prompts
from medwb.models.tokenizer import bytes_to_unicode

from conftest import run_python

SAMPLES = [r["input"] for r in corpus.load_records("discharge", limit=3)] + [
    "患者，男，56岁。T 38.5℃，BP 150/90mmHg。", "Rh阳性，hCG 326IU/L；x² ≥ 0.5"]


def _tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_chat_template_matches_plain_python_render(demo_model_dir):
    tok = _tokenizer(demo_model_dir)
    messages = [{"role": "system", "content": "你是临床助手。"},
                {"role": "user", "content": "任务：鉴别诊断\n主诉：胸痛2小时"},
                {"role": "assistant", "content": "初步诊断：急性ST段抬高型心肌梗死"},
                {"role": "user", "content": "请补充鉴别诊断。"}]
    for gen in (True, False):
        assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen) == \
            prompts.render_chat(messages, add_generation_prompt=gen)


def test_vocabulary_layout_and_round_trip(demo_model_dir):
    tok = _tokenizer(demo_model_dir)
    assert [tok.convert_ids_to_tokens(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    b2u = bytes_to_unicode()
    assert [tok.convert_ids_to_tokens(3 + b) for b in range(256)] == [b2u[b] for b in range(256)]
    for text in SAMPLES:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_bigdl_env_tokenizes_identically(demo_model_dir):
    """transformers 4.31 / tokenizers 0.13 (bigdl env) must read the same tokenizer."""
    main_ids = [_tokenizer(demo_model_dir)(t)["input_ids"] for t in SAMPLES]
    code = (f"import json, medwb; from transformers import AutoTokenizer\n"
            f"t = AutoTokenizer.from_pretrained({str(demo_model_dir)!r})\n"
            f"from medwb.child import write_result; write_result([t(s)['input_ids'] for s in {SAMPLES!r}])")
    assert run_python("bigdl", code) == main_ids


def test_openvino_tokenizer_conversion_gives_identical_ids(demo_model_dir):
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    tok = _tokenizer(demo_model_dir)
    ov_tok, ov_detok = convert_tokenizer(tok, with_detokenizer=True)
    encode = ov.Core().compile_model(ov_tok, "CPU")
    decode = ov.Core().compile_model(ov_detok, "CPU")
    for text in SAMPLES:
        ids = encode([text])["input_ids"][0].tolist()
        assert ids == tok(text)["input_ids"]
        assert decode([ids])["string_output"][0] == text
