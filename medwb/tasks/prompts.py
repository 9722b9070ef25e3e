"""Prompt templates for the two clinical workflows, and the chat format.

A hospital edits these to match its own record style; the demo model was trained on
exactly these forms, so changing them for the demo model lowers its quality (rebuild it
with `medwb demo-model --force` after an edit: the templates are part of its recipe).

Placeholders are filled with str.format; every field of a case is available (see
``medwb.tasks.corpus.Case``). Section headings are constants so that evaluation code and the
workflows parse the same words the templates write.
"""
from __future__ import annotations

# --- chat format -------------------------------------------------------------------
# Plain-text role markers (no added special tokens) so that every runtime, including
# llama.cpp-style ones that only know <s>/</s>, tokenizes a prompt the same way.
USER_MARK = "【医生】"
ASSISTANT_MARK = "【助手】"
SYSTEM_MARK = "【系统】"

# Jinja2, as Hugging Face's apply_chat_template and openvino-genai render it (both trim
# block newlines, so every newline is written inside an expression).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '" + SYSTEM_MARK + "' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '" + USER_MARK + "' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '" + ASSISTANT_MARK + "' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT_MARK + "' }}{% endif %}"
)


def render_chat(messages: list[dict], add_generation_prompt: bool = True,
                eos_token: str = "</s>") -> str:
    """The chat template in plain Python, for runtimes without a template engine.

    Must equal the Jinja template above (a test checks it against transformers).
    """
    marks = {"system": SYSTEM_MARK, "user": USER_MARK}
    parts = []
    for m in messages:
        if m["role"] == "assistant":
            parts.append(ASSISTANT_MARK + m["content"] + eos_token + "\n")
        elif m["role"] in marks:
            parts.append(marks[m["role"]] + m["content"] + "\n")
        else:
            raise ValueError(f"unknown chat role {m['role']!r}: use system, user or assistant")
    if add_generation_prompt:
        parts.append(ASSISTANT_MARK)
    return "".join(parts)


def user_turn(text: str) -> str:
    """One user message, ready for the assistant's answer: the prompt of every task."""
    return render_chat([{"role": "user", "content": text}])


# --- differential diagnosis (鉴别诊断) ----------------------------------------------
# The admission-record fields both workflows start from (病历特点).
CASE_FEATURES = (
    "一般情况：患者，{sex}，{age}岁。\n"
    "主诉：{chief_complaint}\n"
    "现病史：{present_history}\n"
    "既往史：{past_history}\n"
    "体格检查：{physical_exam}\n"
    "辅助检查：{auxiliary_exams}\n"
)
# Real records often carry one free-text 病历特点 paragraph instead of the four fields; the
# corpus renders part of its cases that way (``medwb.tasks.corpus`` styles) so the model reads both.
CASE_SUMMARY = "主诉：{chief_complaint}\n病历特点：{case_summary}\n"
DIAGNOSIS_INSTRUCTION = "请给出初步诊断、诊断依据及鉴别诊断。"
DIAGNOSIS_PROMPT = "任务：鉴别诊断\n" + CASE_FEATURES + DIAGNOSIS_INSTRUCTION
DIAGNOSIS_PROMPT_FREE_TEXT = "任务：鉴别诊断\n" + CASE_SUMMARY + DIAGNOSIS_INSTRUCTION
PRIMARY_HEADING = "初步诊断"
BASIS_HEADING = "诊断依据"
DIFFERENTIAL_HEADING = "鉴别诊断"

# --- discharge record (出院记录) ----------------------------------------------------
_DISCHARGE_REST = (
    "入院诊断：{disease}\n"
    "病程记录：{course_notes}\n"
    "出院前查房：{discharge_condition}\n"
    "出院医嘱：{orders_brief}\n"
    "请根据以上病历生成出院记录。"
)
DISCHARGE_PROMPT = "任务：出院记录\n" + CASE_FEATURES + _DISCHARGE_REST
DISCHARGE_PROMPT_FREE_TEXT = "任务：出院记录\n" + CASE_SUMMARY + _DISCHARGE_REST
# A discharge record pasted whole, in whatever layout its system printed it (the doctor-style
# held-out set puts its records so; stage 2 of the candidate demo model trains on it).
DISCHARGE_PROMPT_PASTED = "任务：出院记录\n主诉：{chief_complaint}\n{case_text}\n请根据以上病历生成出院记录。"
# The five sections of a discharge record, in order.
DISCHARGE_SECTIONS = ("出院诊断", "入院情况", "诊疗经过", "出院情况", "出院医嘱")
