"""PromptCBLUE scoring, task by task: reply text -> structured answer -> metric.

The rules follow the official evaluation (github michael-wzhu/PromptCBLUE,
``src/evaluation/``) as written down in ``docs/evaluation/promptcblue-official-scoring.md``
("the doc"; § numbers below refer to it). That code has no licence: nothing here is copied
from it, the rules are re-implemented from the doc. Read the doc for the details; this
docstring lists every rule and every deliberate difference. ``rules="ccks2023"`` (``RULES``,
doc §7) scores by the CCKS 2023 period's parser instead.

Pipeline (doc §0)
-----------------
1. ``parse(spec, text, answer_choices)`` turns a reply into the structured answer the
   official *reference* parser would give (doc §2), plus ``parse_failed`` (MedWB's own flag,
   below). **Gold replies go through the same parse** as predictions: the official dev gold
   (``dev_structured.json``) is produced that way (doc §0.3).
2. ``sample_stats(spec, gold_answer, pred_answer)``: per-sample sufficient statistics, so a
   bootstrap can resample samples without re-parsing.
3. ``aggregate(spec, stats_list)``: the task's metric over pooled statistics (doc §3).
4. ``overall(task_scores)``: mean of the main metrics x100 (doc §3.6).
``score_task`` chains 1-3 for one task.

Families and their rules
------------------------
Official task -> family (``TASKS``); MedWB's synthetic tasks reuse an official task's rules
("mirrors"), except MedWB-DDx and MedWB-DSR which have families of their own.

- ``ner`` (CMeEE-V2, IMCS-V2-NER; MedWB-NER): for each type T in answer_choices, a line
  starting with ``T实体`` gives mentions: ``T实体：`` (full-width colon) removed everywhere in
  the line, rest split on ``，``, stripped, empties dropped. Types outside the choices are
  never read; an ASCII colon leaves the prefix in the mention (a false positive), as
  upstream. Micro-F1 over (entity, type).
- ``spo`` (CMeIE-V2, also accepted as CMeIE, doc §4 row 8): per line, predicate = text
  before ``关系的头尾实体对`` minus its first two characters, stripped; the header
  ``具有{predicate}关系的头尾实体对如下：`` is removed; the rest split on ``。``; a piece with
  ``，尾实体为`` gives (head minus ``头实体为``, tail minus ``尾实体为``), both stripped.
  Predicates are not checked against the choices. Micro-F1 over (object, predicate, subject).
- ``normalization`` (CHIP-CDN; MedWB-CDN): only the last line; split on ``，``, stripped,
  kept when exactly in answer_choices, de-duplicated. A trailing newline gives an empty
  answer. Micro-F1 over (term, "normalization").
- ``event`` (CHIP-CDEE): first line dropped (header); every other line is one event,
  blank lines included (an all-empty event); pieces split on ``；`` starting with
  ``主体词：`` / ``发生状态：`` / ``描述词：`` / ``解剖部位：`` fill that field (prefix removed,
  stripped; the two list fields split on ``，`` in reply order). Micro-F1 over the 4-field
  event; list order matters (JSON arrays).
- ``attr`` (CHIP-MDCFNPC, IMCS-V2-SR): first line dropped; a line must split on ``：`` into
  exactly two parts; entity stripped, label *not* stripped; a label outside the choices
  becomes the task's fallback (MDCFNPC ``不标注``, SR ``无法根据上下文确定病人是否患有该症状``).
  Micro-F1 over (attr, entity).
- ``causal`` (CMedCausal): header lines set the relation (substring tests, in order:
  ``因果关系三元组如下`` ``条件关系三元组`` ``上下位关系``); a ``给定的文本没有指定关系的三元组``
  line stops the parse; other non-empty lines are triples ``头实体：X；尾实体：Y``, or for
  条件关系 ``…；尾三元组：头实体：A；尾实体：B；关系：因果关系`` (nested object). No header
  first: predicate None. **Difference:** the official parser raises on a malformed triple
  line (aborting the whole submission); ours skips the line and sets parse_failed.
- ``cls_macro`` (CHIP-CTC, KUAKE-QIC, IMCS-V2-DAC; MedWB-QIC) and ``cls_weighted``
  (CHIP-STS, KUAKE-IR, KUAKE-QQR, KUAKE-QTR; MedWB-STS): the label is the stripped reply
  (CHIP-STS maps ``相同``->``是的``, ``不同``->``不是``); nothing is validated. In the metric
  an empty predicted label becomes the task's default label (doc §3.2); then
  ``sklearn.metrics.classification_report(gold, pred, output_dict=True, zero_division=0)``
  with **no** ``labels=``: labels are gold ∪ predicted, so a stray predicted label is a
  zero-F1 class that lowers macro-F1 but has zero weight in the weighted average. The
  README calls the weighted tasks "micro" (doc §4 row 1); the code uses "weighted avg".
- ``diagnosis`` (MedWB-DDx, MedWB's own): the text after ``初步诊断：`` on the first line
  starting with it, stripped ("" if none); macro-F1 exactly as ``cls_macro`` but with no
  default label: an empty prediction stays the label "", which is never gold, so it is a
  stray zero-F1 class and costs macro-F1 (there is no "other" class to fall back on).
- ``report`` (IMCS-V2-MRG; MedWB-MRG): reply stripped, first line dropped; for each key
  ``主诉 现病史 辅助检查 既往史 诊断 建议`` a line *starting* with ``key：`` gives the text after
  the last ``key：`` in that line, stripped; a later line wins. Answer: dict of the sections
  found.
- ``sections`` (MedWB-DSR, MedWB's own): headings ``出院诊断 入院情况 诊疗经过 出院情况
  出院医嘱`` written ``heading：`` anywhere in the reply; a section runs to the next of these
  headings or the end (it may span lines) and is stripped; a repeated heading: the later
  wins (as in MRG). Scored like ``report``.
- ``free_text`` (MedDG): the stripped reply.
- ROUGE (report, sections, free_text; doc §3.3-3.4): each text is stripped, tokenised by
  ``basic_tokenize`` (transformers 4.28 ``BasicTokenizer(tokenize_chinese_chars=True)``),
  joined by spaces, and "" becomes ``无 。`` on either side; the score is
  ``rouge_chinese.Rouge().get_scores(hyps, refs, avg=True)["rouge-l"]["f"]``, one call over
  all pairs pooled. For report/sections the pairs are (sample, *gold* section): a section
  missing from the prediction is "", prediction-only sections are ignored. So the MRG score
  is the mean over pooled pairs, not the README's per-section mean (doc §4 row 3).
- IE metric (doc §3.1): each answer item becomes the tuple of JSON encodings
  (``ensure_ascii=False``) of its values ordered by sorted key name; sets per sample (so
  duplicates count once); TP/FP/FN pooled over samples; **TP = 0 gives P = R = F1 = 0**,
  even when gold and prediction are both empty everywhere.
- Text2DT is not supported (its decision-tree metric is not implemented): ``task_spec``
  raises, so a data file containing it fails at load with that reason.

parse_failed (MedWB's addition, not official)
---------------------------------------------
True when the reply does not have the layout the family expects. It never changes the
answer or the score; it counts replies that ignored the format. Per family:

- ner: no line starts with ``T实体：`` (full-width colon) for a T in the choices (so the
  ASCII-colon case is flagged although it still yields a mention);
- spo: no line contains the header ``关系的头尾实体对``;
- event: no line after the first has a piece starting with one of the four ``field：``;
- attr: no line after the first splits on ``：`` into exactly two parts;
- causal: a malformed triple line was skipped, or the reply has neither a triple nor the
  "no triples" sentence;
- normalization: the last line yields no choice;
- cls families: the label (raw or after the 相同/不同 mapping) is not in answer_choices; with
  no choices given, only an empty label;
- diagnosis: no line starts with ``初步诊断：``;
- report/sections: no section heading found;
- free_text: the reply is empty.
A reply that says "none" in words (no entities, no terms) is flagged too: compare with the
gold replies' rate (``score_task`` reports ``gold_parse_failures``).

Never raising on model output: parsing tolerates any text (``answer_choices`` None where
upstream asserts a list gives no answer and parse_failed). Errors are raised only for the
caller's mistakes and for gold that the official scorer rejects (an empty gold label).

Mapping other task names (``task_map``)
---------------------------------------
``task_spec(name, task_map)``: a ``task_map`` value may be a known task name (official or
MedWB; its rules apply) or a family name (that family's generic rules: no default label for
the cls families, so an empty prediction stays ""; fallback label "" for ``attr``; the MRG
keys for ``report``; the discharge headings for ``sections``).
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, replace

from medwb.errors import MedwbError
from medwb.tasks import prompts

# --- families and tasks ---------------------------------------------------------------

IE_FAMILIES = ("ner", "spo", "normalization", "event", "attr", "causal")
LABEL_FAMILIES = ("cls_macro", "cls_weighted", "diagnosis")
ROUGE_FAMILIES = ("report", "sections", "free_text")
FAMILIES = IE_FAMILIES + LABEL_FAMILIES + ROUGE_FAMILIES

METRIC = {**{f: "micro_f1" for f in IE_FAMILIES}, "cls_macro": "macro_f1", "diagnosis": "macro_f1",
          "cls_weighted": "weighted_f1", **{f: "rouge_l" for f in ROUGE_FAMILIES}}

# Families whose parser reads its labels from answer_choices (upstream asserts a list or
# tests `in answer_choices`): the loader requires a list for these.
NEEDS_CHOICES = ("ner", "spo", "normalization", "attr")

MRG_SECTIONS = ("主诉", "现病史", "辅助检查", "既往史", "诊断", "建议")
DISCHARGE_SECTIONS = tuple(prompts.DISCHARGE_SECTIONS)  # 出院诊断 入院情况 诊疗经过 出院情况 出院医嘱
DIAGNOSIS_HEADING = prompts.PRIMARY_HEADING  # 初步诊断
EMPTY_ROUGE_TEXT = "无 。"  # what the official scorer substitutes for an empty text
UNSUPPORTED = {"Text2DT": "the decision-tree metric (tree_lenv_radio) is not implemented in MedWB"}


@dataclass(frozen=True)
class TaskSpec:
    """How one ``task_dataset`` is parsed and scored.

    ``mirrors``: the official task whose rules apply (None for MedWB's own families and for
    a task mapped to a bare family). ``default_label``: cls families, replaces an empty
    predicted label. ``fallback_label``: attr, replaces a label outside the choices.
    ``label_map``: exact-reply rewrites (CHIP-STS). ``sections``: report/sections keys.
    ``rules``: the rule set (``RULES``): the official repository's current rules, or the
    CCKS 2023 period's.
    """
    name: str
    family: str
    mirrors: str | None = None
    default_label: str | None = None
    fallback_label: str | None = None
    label_map: tuple[tuple[str, str], ...] = ()
    sections: tuple[str, ...] = ()
    rules: str = "official"

    @property
    def metric(self) -> str:
        return METRIC[self.family]


def _generic(family: str) -> TaskSpec:
    """A family's rules with no task-specific labels (used for task_map family targets)."""
    extra = {"cls_macro": {"default_label": ""}, "cls_weighted": {"default_label": ""},
             "attr": {"fallback_label": ""}, "report": {"sections": MRG_SECTIONS},
             "sections": {"sections": DISCHARGE_SECTIONS}}.get(family, {})
    return TaskSpec(name=family, family=family, **extra)


def _official(name: str, family: str, **kw) -> TaskSpec:
    return replace(_generic(family), name=name, mirrors=name, **kw)


_OTHER = "非上述类型"
_STS_MAP = (("相同", "是的"), ("不同", "不是"))
OFFICIAL_TASKS: dict[str, TaskSpec] = {s.name: s for s in [
    _official("CMeEE-V2", "ner"),
    _official("IMCS-V2-NER", "ner"),
    _official("CMeIE-V2", "spo"),
    _official("CHIP-CDN", "normalization"),
    _official("CHIP-CDEE", "event"),
    _official("CHIP-MDCFNPC", "attr", fallback_label="不标注"),
    _official("IMCS-V2-SR", "attr", fallback_label="无法根据上下文确定病人是否患有该症状"),
    _official("CMedCausal", "causal"),
    _official("CHIP-CTC", "cls_macro", default_label=_OTHER),
    _official("KUAKE-QIC", "cls_macro", default_label=_OTHER),
    _official("IMCS-V2-DAC", "cls_macro", default_label=_OTHER),
    _official("CHIP-STS", "cls_weighted", default_label="是的", label_map=_STS_MAP),
    _official("KUAKE-IR", "cls_weighted", default_label="相关"),
    _official("KUAKE-QQR", "cls_weighted", default_label="完全一致"),
    _official("KUAKE-QTR", "cls_weighted", default_label="完全不匹配或者没有参考价值"),
    _official("IMCS-V2-MRG", "report"),
    _official("MedDG", "free_text"),
]}
# The README, the format doc and the toy data call CMeIE-V2 "CMeIE" (doc §4 row 8).
ALIASES = {"CMeIE": "CMeIE-V2"}
# MedWB's bundled synthetic tasks: official rules, or a MedWB family.
MEDWB_TASKS: dict[str, TaskSpec] = {
    "MedWB-NER": OFFICIAL_TASKS["CMeEE-V2"],
    "MedWB-CDN": OFFICIAL_TASKS["CHIP-CDN"],
    "MedWB-QIC": OFFICIAL_TASKS["KUAKE-QIC"],
    "MedWB-STS": OFFICIAL_TASKS["CHIP-STS"],
    "MedWB-MRG": OFFICIAL_TASKS["IMCS-V2-MRG"],
    "MedWB-DDx": _generic("diagnosis"),
    "MedWB-DSR": _generic("sections"),
}


def known_tasks() -> list[str]:
    return [*OFFICIAL_TASKS, *ALIASES, *MEDWB_TASKS]


def _builtin(name: str) -> TaskSpec | None:
    if name in UNSUPPORTED:
        raise MedwbError(f"task {name!r} is not supported: {UNSUPPORTED[name]}; "
                         f"remove its records from the data file")
    spec = OFFICIAL_TASKS.get(ALIASES.get(name, name)) or MEDWB_TASKS.get(name)
    return replace(spec, name=name) if spec else None


def task_spec(task_dataset: str, task_map: dict[str, str] | None = None, rules: str = "official") -> TaskSpec:
    """The rules for ``task_dataset``; ``task_map`` (``{name: known task or family}``) wins
    over the built-in table; ``rules`` picks the rule set (``RULES``). Raises MedwbError for
    an unknown or unsupported task, or a task the rule set did not have."""
    return with_rules(_task_spec(task_dataset, task_map), rules)


def _task_spec(task_dataset: str, task_map: dict[str, str] | None) -> TaskSpec:
    if task_map and task_dataset in task_map:
        target = task_map[task_dataset]
        if target in FAMILIES:
            return replace(_generic(target), name=task_dataset)
        spec = _builtin(target)
        if spec is None:
            raise MedwbError(f"task_map[{task_dataset!r}] = {target!r} is neither a known task nor a "
                             f"family: use one of {', '.join(known_tasks() + list(FAMILIES))}")
        return replace(spec, name=task_dataset)
    spec = _builtin(task_dataset)
    if spec is None:
        name = json.dumps(task_dataset, ensure_ascii=False)
        raise MedwbError(f"task_dataset {name} is unknown: map it to an official task or a family "
                         f'with task_map={{{name}: "<official task or family>"}} (CLI: --task-map '
                         f"{task_dataset}=FAMILY); families: {', '.join(FAMILIES)}")
    return spec


# --- rule sets --------------------------------------------------------------------------
# "official": the repository's current rules (src/evaluation/, 18 tasks; the long-term
# leaderboard since 2023-08-28). "ccks2023": the sample parser of the CCKS 2023 period
# (src/for_eval/post_generate_process.py, May-August 2023), which the README's dev
# baselines (ChatGLM-6B p-tuning 0.6095, LoRA 0.6448...) were published under. Its
# differences, in docs/evaluation/promptcblue-official-scoring.md "Rule sets":
# - ASCII ``:`` ``,`` ``;`` become full-width ``：`` ``，`` ``；`` in the whole reply (gold and
#   prediction), the first 100 of each, before any parsing; answer_choices are not touched;
# - CHIP-MDCFNPC: a label outside the choices becomes the long "no meaning" label (a real
#   class then), not ``不标注``; KUAKE-QTR: an empty label becomes ``完全不匹配`` (no class);
# - 16 tasks: CMedCausal (and Text2DT) did not exist.
# The period's metric code was never published and each team submitted its own parser, so
# this is the organisers' reference parser of the time, not any team's leaderboard score.
RULES = {"official": "PromptCBLUE's current official rules (src/evaluation/, 18 tasks)",
         "ccks2023": "the CCKS 2023 period's reference parser (src/for_eval/, 16 tasks, ASCII :,; read as "
                     "full-width)"}
_CCKS2023_PUNCTUATION = ((":", "："), (",", "，"), (";", "；"))
_CCKS2023_CHANGES = {"CHIP-MDCFNPC": {"fallback_label": "无实际意义的不标注或者和病人当前的状态独立不标注"},
                     "KUAKE-QTR": {"default_label": "完全不匹配"}}
_CCKS2023_ABSENT = {"CMedCausal": "it was added after CCKS 2023 (2023-08-08)"}


def with_rules(spec: TaskSpec, rules: str) -> TaskSpec:
    """``spec`` under the rule set ``rules``."""
    if rules not in RULES:
        raise MedwbError(f"rules {rules!r} is unknown: use one of {', '.join(RULES)}")
    if rules == "official":
        return spec
    if spec.mirrors in _CCKS2023_ABSENT:
        raise MedwbError(f"task {spec.name!r} cannot be scored by --rules {rules}: {spec.mirrors} "
                         f"{_CCKS2023_ABSENT[spec.mirrors]}; score it with --rules official")
    return replace(spec, rules=rules, **_CCKS2023_CHANGES.get(spec.mirrors, {}))


def normalize_reply(spec: TaskSpec, text: str) -> str:
    """The reply as ``spec.rules`` reads it (ccks2023: ASCII :,; to full-width, 100 of each)."""
    if spec.rules == "ccks2023":
        for ascii_char, full_width in _CCKS2023_PUNCTUATION:
            text = text.replace(ascii_char, full_width, 100)
    return text


# --- BasicTokenizer (transformers 4.28 defaults) ---------------------------------------
# transformers 5 no longer ships BasicTokenizer; the official ROUGE tokenisation is
# BasicTokenizer(tokenize_chinese_chars=True) with do_lower_case=True, strip_accents unset
# (so on), punctuation split on. transformers >= 4.29 adds an NFC step before lower-casing;
# it changes nothing here because accent stripping decomposes (NFD) again afterwards.
# tests/test_eval_scoring.py checks identity against transformers 4.31 (bigdl env).

_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_cjk(char: str) -> bool:
    cp = ord(char)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_punctuation(char: str) -> bool:
    # All non-alphanumeric printable ASCII counts as punctuation ("$", "^", "`" included).
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _clean(text: str) -> str:
    """Drop NUL, U+FFFD and control characters; every whitespace character becomes a space."""
    out = []
    for char in text:
        if char in "\t\n\r" or unicodedata.category(char) == "Zs":
            out.append(" ")
        elif char in "\x00\ufffd" or unicodedata.category(char).startswith("C"):
            continue
        else:
            out.append(char)
    return "".join(out)


def _strip_accents(word: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")


def _split_punctuation(word: str) -> list[str]:
    pieces, current = [], ""
    for char in word:
        if _is_punctuation(char):
            pieces += [current, char] if current else [char]
            current = ""
        else:
            current += char
    return pieces + [current] if current else pieces


def basic_tokenize(text: str) -> list[str]:
    """Tokens as transformers 4.28 ``BasicTokenizer(tokenize_chinese_chars=True)`` gives:
    each CJK ideograph and each punctuation character alone, Latin/digit runs whole,
    lower-cased and accent-stripped, control characters removed."""
    text = "".join(f" {c} " if _is_cjk(c) else c for c in _clean(text))
    tokens = []
    for word in text.split():
        tokens += _split_punctuation(_strip_accents(word.lower()))
    return " ".join(tokens).split()


def rouge_text(text: str) -> str:
    """A text as the official ROUGE sees it: stripped, tokenised, space-joined, "" -> 无 。."""
    return " ".join(basic_tokenize(text.strip())) or EMPTY_ROUGE_TEXT


# --- parsing ----------------------------------------------------------------------------

def _parse_ner(spec, text, choices):
    entities, well_formed = [], False
    for type_ in choices or ():
        for line in text.split("\n"):
            if not line.startswith(f"{type_}实体"):
                continue
            well_formed |= line.startswith(f"{type_}实体：")
            mentions = (m.strip() for m in line.replace(f"{type_}实体：", "").split("，"))
            entities += [{"entity": m, "type": type_} for m in mentions if m]
    return entities, not well_formed


SPO_HEADER = "关系的头尾实体对"


def _parse_spo(spec, text, choices):
    triples, saw_header = [], False
    for line in text.split("\n"):
        saw_header |= SPO_HEADER in line
        # Upstream assumes the header starts with the two characters 具有.
        predicate = line.split(SPO_HEADER)[0][2:].strip()
        body = line.replace(f"具有{predicate}{SPO_HEADER}如下：", "")
        for piece in body.split("。"):
            parts = piece.split("，尾实体为")
            if len(parts) < 2:
                continue
            triples.append({"predicate": predicate,
                            "subject": parts[0].replace("头实体为", "").strip(),
                            "object": parts[1].replace("尾实体为", "").strip()})
    return triples, not saw_header


def _parse_normalization(spec, text, choices):
    terms = []
    for piece in text.split("\n")[-1].split("，"):
        term = piece.strip()
        if term and term in (choices or ()) and term not in terms:
            terms.append(term)
    return [{"entity": t, "type": "normalization"} for t in terms], not terms


EVENT_FIELDS = ("主体词", "发生状态", "描述词", "解剖部位")
EVENT_LIST_FIELDS = ("描述词", "解剖部位")


def _parse_event_line(line: str) -> tuple[dict, bool]:
    event, matched = {}, False
    for piece in line.split("；"):
        # Fields are tested in order on the piece as it is rewritten, as upstream does.
        for name in EVENT_FIELDS:
            if piece.startswith(f"{name}："):
                matched = True
                piece = piece.replace(f"{name}：", "").strip()
                event[name] = ([v.strip() for v in piece.split("，") if v.strip()]
                               if name in EVENT_LIST_FIELDS else piece)
    for name in EVENT_FIELDS:
        event.setdefault(name, [] if name in EVENT_LIST_FIELDS else "")
    return event, matched


def _parse_event(spec, text, choices):
    events, any_field = [], False
    for line in text.split("\n")[1:]:  # the first line is the header, always dropped
        event, matched = _parse_event_line(line)
        events.append(event)
        any_field |= matched
    return events, not any_field


def _parse_attr(spec, text, choices):
    items = []
    for line in text.split("\n")[1:]:  # header dropped
        parts = line.split("：")
        if len(parts) != 2:
            continue
        label = parts[1] if parts[1] in (choices or ()) else spec.fallback_label
        items.append({"entity": parts[0].strip(), "attr": label})
    return items, not items


CAUSAL_HEADERS = (("因果关系三元组如下", "因果关系"), ("条件关系三元组", "条件关系"), ("上下位关系", "上下位关系"))
CAUSAL_NONE = "给定的文本没有指定关系的三元组"


def _part(text: str | None, sep: str, index: int) -> str | None:
    """``text.split(sep)[index]``, or None where upstream would raise IndexError."""
    if text is None:
        return None
    parts = text.split(sep)
    return parts[index] if index < len(parts) else None


def _causal_triple(line: str, relation: str | None) -> dict | None:
    """One triple line, or None where the official parser would crash."""
    head = _part(line, "头实体：", 1)
    if head is None:
        return None
    head = head.split("；尾实体：")[0]
    if relation != "条件关系":
        tail = _part(line, "；尾实体：", 1)
        return None if tail is None else {"predicate": relation, "subject": head, "object": tail}
    nested = _part(line, "；尾三元组：", 1)
    n_head = _part(nested, "头实体：", 1)
    n_tail = _part(nested, "；尾实体：", 1)
    n_rel = _part(nested, "；关系：", 1)
    if n_head is None or n_tail is None or n_rel != "因果关系":
        return None
    inner = {"predicate": n_rel, "subject": n_head.split("；尾实体：")[0], "object": n_tail.split("；关系：")[0]}
    return {"predicate": relation, "subject": head, "object": inner}


def _parse_causal(spec, text, choices):
    triples, relation, malformed, said_none = [], None, False, False
    for line in text.split("\n"):
        line = line.strip()
        header = next((rel for marker, rel in CAUSAL_HEADERS if marker in line), None)
        if header:
            relation = header
            continue
        if CAUSAL_NONE in line:
            said_none = True
            break
        if not line:
            continue
        triple = _causal_triple(line, relation)
        if triple is None:
            malformed = True  # the official parser raises here and the whole run fails
        else:
            triples.append(triple)
    return triples, malformed or not (triples or said_none)


def _parse_label(spec, text, choices):
    raw = text.strip()
    label = dict(spec.label_map).get(raw, raw)
    if choices is None:
        return label, label == ""
    return label, raw not in choices and label not in choices


def _parse_diagnosis(spec, text, choices):
    prefix = f"{DIAGNOSIS_HEADING}："
    for line in text.split("\n"):
        if line.startswith(prefix):
            return line[len(prefix):].strip(), False
    return "", True


def _parse_report(spec, text, choices):
    found = {}
    lines = text.strip().split("\n")[1:]  # header dropped
    for key in spec.sections:
        for line in lines:
            if line.startswith(f"{key}："):  # not stripped first: leading spaces break the match
                found[key] = line.strip().split(f"{key}：")[-1].strip()  # later lines overwrite
    return found, not found


def _parse_sections(spec, text, choices):
    pattern = re.compile("(" + "|".join(map(re.escape, spec.sections)) + ")：")
    matches = list(pattern.finditer(text))
    found = {}
    for m, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following else len(text)
        found[m.group(1)] = text[m.end():end].strip()  # a repeated heading: the later wins
    return found, not found


def _parse_free_text(spec, text, choices):
    answer = text.strip()
    return answer, answer == ""


_PARSERS = {"ner": _parse_ner, "spo": _parse_spo, "normalization": _parse_normalization,
            "event": _parse_event, "attr": _parse_attr, "causal": _parse_causal,
            "cls_macro": _parse_label, "cls_weighted": _parse_label, "diagnosis": _parse_diagnosis,
            "report": _parse_report, "sections": _parse_sections, "free_text": _parse_free_text}


def parse(spec: TaskSpec, text: str, answer_choices=None) -> tuple[object, bool]:
    """``(answer, parse_failed)`` for one reply (gold or prediction). Never raises on text."""
    choices = list(answer_choices) if answer_choices is not None else None
    return _PARSERS[spec.family](spec, normalize_reply(spec, text or ""), choices)


# --- per-sample statistics ------------------------------------------------------------

def _tuples(answer: list[dict]) -> set[tuple[str, ...]]:
    return {tuple(json.dumps(item[k], ensure_ascii=False) for k in sorted(item)) for item in answer}


def sample_stats(spec: TaskSpec, gold_answer, pred_answer):
    """Sufficient statistics of one sample: IE ``(tp, fp, fn)``; label families
    ``(gold_label, pred_label)`` after the default-label replacement; ROUGE families a list
    of ``(pred_text, gold_text)`` pairs, tokenised and space-joined, "" -> 无 。."""
    if spec.family in IE_FAMILIES:
        gold, pred = _tuples(gold_answer), _tuples(pred_answer)
        return len(gold & pred), len(pred - gold), len(gold - pred)
    if spec.family in LABEL_FAMILIES:
        if gold_answer == "":
            raise MedwbError(f"task {spec.name!r}: a gold label is empty (the official scorer rejects "
                             f"it too): fix that record's target in the data file")
        return gold_answer, pred_answer or (spec.default_label or "")
    if spec.family == "free_text":
        return [(rouge_text(pred_answer), rouge_text(gold_answer))]
    # report / sections: one pair per *gold* section; a missing predicted section is "".
    return [(rouge_text(pred_answer.get(key, "")), rouge_text(text)) for key, text in gold_answer.items()]


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    if tp == 0:  # official rule: no true positive -> everything 0, even when all is empty
        return 0.0, 0.0, 0.0
    p, r = tp / (tp + fp), tp / (tp + fn)
    return p, r, 2 * p * r / (p + r)


def _rouge(pairs: list[tuple[str, str]]) -> dict:
    from rouge_chinese import Rouge
    hyps, refs = [p for p, _ in pairs], [g for _, g in pairs]
    return Rouge().get_scores(hyps, refs, avg=True)


def sample_score(spec: TaskSpec, stats) -> float | None:
    """A per-sample figure for logs: IE that sample's F1 (TP = 0 -> 0), label families 1.0
    or 0.0, ROUGE the mean ROUGE-L F of its pairs (None if it has none). The task score is
    not the mean of these (pooled micro-F1, macro/weighted F1, pooled pairs), except for
    MedDG, where each sample is one pair."""
    if spec.family in IE_FAMILIES:
        return _f1(*stats)[2]
    if spec.family in LABEL_FAMILIES:
        return float(stats[0] == stats[1])
    return _rouge(stats)["rouge-l"]["f"] if stats else None


# --- aggregation ------------------------------------------------------------------------

def aggregate(spec: TaskSpec, stats_list: list) -> dict:
    """The task's metric over the samples' stats: ``score`` (main metric, 0..1, or None with
    a ``reason``), ``precision``/``recall`` where they exist, ``n`` and extras."""
    out = {"metric": spec.metric, "n": len(stats_list)}
    if spec.family in IE_FAMILIES:
        tp, fp, fn = (sum(s[i] for s in stats_list) for i in range(3))
        p, r, f = _f1(tp, fp, fn)
        return {**out, "score": f, "precision": p, "recall": r, "tp": tp, "fp": fp, "fn": fn}
    if spec.family in LABEL_FAMILIES:
        return {**out, **_classification(spec, stats_list)}
    pairs = [pair for sample in stats_list for pair in sample]
    if not pairs:
        return {**out, "score": None, "pairs": 0, "reason": "no (sample, gold section) pair to score"}
    scores = _rouge(pairs)
    return {**out, "score": scores["rouge-l"]["f"], "pairs": len(pairs),
            "rouge-1": scores["rouge-1"]["f"], "rouge-2": scores["rouge-2"]["f"],
            "rouge-l": scores["rouge-l"]["f"]}


def _classification(spec: TaskSpec, stats_list: list) -> dict:
    if not stats_list:
        return {"score": None, "reason": "no sample to score"}
    from sklearn.metrics import classification_report
    gold, pred = [g for g, _ in stats_list], [p for _, p in stats_list]
    # No labels= on purpose: sklearn takes gold ∪ predicted labels, as the official code.
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    avg = report["weighted avg" if spec.metric == "weighted_f1" else "macro avg"]
    return {"score": avg["f1-score"], "precision": avg["precision"], "recall": avg["recall"],
            "accuracy": sum(g == p for g, p in stats_list) / len(stats_list)}


def score_task(spec: TaskSpec, gold_texts: list[str], pred_texts: list[str],
               answer_choices_list: list | None = None) -> dict:
    """Parse gold and predicted replies, then ``aggregate``; adds ``parse_failures`` (of the
    predictions), ``gold_parse_failures`` and ``n``."""
    if len(gold_texts) != len(pred_texts):
        raise MedwbError(f"task {spec.name!r}: {len(gold_texts)} gold texts but {len(pred_texts)} "
                         f"predictions: pass one prediction per sample")
    choices_list = answer_choices_list if answer_choices_list is not None else [None] * len(gold_texts)
    if len(choices_list) != len(gold_texts):
        raise MedwbError(f"task {spec.name!r}: answer_choices_list has {len(choices_list)} entries for "
                         f"{len(gold_texts)} samples: pass one (or None) per sample")
    stats, failures, gold_failures = [], 0, 0
    for gold_text, pred_text, choices in zip(gold_texts, pred_texts, choices_list):
        gold, gold_failed = parse(spec, gold_text, choices)
        pred, pred_failed = parse(spec, pred_text, choices)
        stats.append(sample_stats(spec, gold, pred))
        failures += pred_failed
        gold_failures += gold_failed
    return {**aggregate(spec, stats), "parse_failures": failures, "gold_parse_failures": gold_failures}


def overall(task_scores: dict[str, float]) -> float:
    """Mean of the tasks' main metrics x100 (doc §3.6). The official code divides by its 18
    fixed tasks; this divides by the tasks given, so it equals the official figure only
    on the full 18-task set."""
    if not task_scores:
        raise MedwbError("overall: no task scores given: score at least one task first")
    missing = [name for name, score in task_scores.items() if score is None]
    if missing:
        raise MedwbError(f"overall: task(s) {', '.join(missing)} have no score: drop them or fix their data")
    return 100 * sum(task_scores.values()) / len(task_scores)
