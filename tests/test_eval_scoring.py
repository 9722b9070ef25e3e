"""PromptCBLUE scoring (medwb.eval.scoring): parse rules and metrics per family, against
answers and numbers worked out by hand from docs/evaluation/promptcblue-official-scoring.md."""
import json

import pytest

from medwb.errors import MedwbError
from medwb.eval import scoring
from medwb.eval.scoring import aggregate, parse, sample_score, sample_stats, score_task, task_spec

from conftest import run_python

# ROUGE-L F as rouge_chinese computes it: F = 2PR / (P + R + 1e-8).
EPS = 1e-8


def f_rouge(p: float, r: float) -> float:
    return 2 * p * r / (p + r + EPS) if p + r else 0.0


def stats_of(spec, golds, preds, choices=None):
    return [sample_stats(spec, parse(spec, g, choices)[0], parse(spec, p, choices)[0])
            for g, p in zip(golds, preds)]


# --- task table ------------------------------------------------------------------------

def test_task_table_families_metrics_and_default_labels():
    expected = {
        "CMeEE-V2": ("ner", "micro_f1"), "IMCS-V2-NER": ("ner", "micro_f1"),
        "CMeIE-V2": ("spo", "micro_f1"), "CMeIE": ("spo", "micro_f1"),
        "CHIP-CDN": ("normalization", "micro_f1"), "CHIP-CDEE": ("event", "micro_f1"),
        "CHIP-MDCFNPC": ("attr", "micro_f1"), "IMCS-V2-SR": ("attr", "micro_f1"),
        "CMedCausal": ("causal", "micro_f1"),
        "CHIP-CTC": ("cls_macro", "macro_f1"), "KUAKE-QIC": ("cls_macro", "macro_f1"),
        "IMCS-V2-DAC": ("cls_macro", "macro_f1"),
        "CHIP-STS": ("cls_weighted", "weighted_f1"), "KUAKE-IR": ("cls_weighted", "weighted_f1"),
        "KUAKE-QQR": ("cls_weighted", "weighted_f1"), "KUAKE-QTR": ("cls_weighted", "weighted_f1"),
        "IMCS-V2-MRG": ("report", "rouge_l"), "MedDG": ("free_text", "rouge_l"),
        "MedWB-NER": ("ner", "micro_f1"), "MedWB-CDN": ("normalization", "micro_f1"),
        "MedWB-QIC": ("cls_macro", "macro_f1"), "MedWB-STS": ("cls_weighted", "weighted_f1"),
        "MedWB-MRG": ("report", "rouge_l"), "MedWB-DDx": ("diagnosis", "macro_f1"),
        "MedWB-DSR": ("sections", "rouge_l"),
    }
    for name, (family, metric) in expected.items():
        spec = task_spec(name)
        assert (spec.name, spec.family, spec.metric) == (name, family, metric)
    defaults = {"CHIP-STS": "是的", "KUAKE-IR": "相关", "KUAKE-QTR": "完全不匹配或者没有参考价值",
                "KUAKE-QQR": "完全一致", "CHIP-CTC": "非上述类型", "KUAKE-QIC": "非上述类型",
                "IMCS-V2-DAC": "非上述类型", "MedWB-QIC": "非上述类型", "MedWB-STS": "是的"}
    for name, label in defaults.items():
        assert task_spec(name).default_label == label
    assert task_spec("CMeIE").mirrors == "CMeIE-V2"
    assert task_spec("MedWB-NER").mirrors == "CMeEE-V2"
    assert task_spec("MedWB-DDx").mirrors is None
    assert task_spec("IMCS-V2-MRG").sections == ("主诉", "现病史", "辅助检查", "既往史", "诊断", "建议")
    assert task_spec("MedWB-DSR").sections == ("出院诊断", "入院情况", "诊疗经过", "出院情况", "出院医嘱")


def test_unknown_and_unsupported_tasks_and_task_map():
    with pytest.raises(MedwbError, match=r'task_dataset "Foo" is unknown.*task_map=\{"Foo": .*--task-map Foo=FAMILY'):
        task_spec("Foo")
    with pytest.raises(MedwbError, match="decision-tree metric .* not implemented"):
        task_spec("Text2DT")
    assert task_spec("Foo", {"Foo": "CHIP-STS"}).default_label == "是的"
    mapped = task_spec("Foo", {"Foo": "cls_weighted"})  # a family: generic rules, no default label
    assert (mapped.name, mapped.family, mapped.default_label, mapped.mirrors) == ("Foo", "cls_weighted", "", None)
    assert task_spec("MedDG", {"MedDG": "ner"}).family == "ner"  # the map wins
    with pytest.raises(MedwbError, match=r"task_map\['Foo'\] = 'nope' is neither a known task nor a family"):
        task_spec("Foo", {"Foo": "nope"})


# --- ner ---------------------------------------------------------------------------------

def test_ner_parse():
    spec = task_spec("CMeEE-V2")
    text = "上述句子中的实体包含：\n疾病实体：发热，咳嗽， ，发热\n症状实体:头痛\n药物实体：阿司匹林"
    answer, failed = parse(spec, text, ["疾病", "症状"])
    # Duplicates kept in the answer; ASCII colon keeps the prefix; 药物 is not a choice.
    assert answer == [{"entity": "发热", "type": "疾病"}, {"entity": "咳嗽", "type": "疾病"},
                      {"entity": "发热", "type": "疾病"}, {"entity": "症状实体:头痛", "type": "症状"}]
    assert failed is False
    assert parse(spec, "症状实体:头痛", ["症状"]) == ([{"entity": "症状实体:头痛", "type": "症状"}], True)
    assert parse(spec, "", ["疾病"]) == ([], True)
    assert parse(spec, "疾病实体：", ["疾病"]) == ([], False)  # the form, with nothing listed
    assert parse(spec, "疾病实体：无", ["疾病"]) == ([{"entity": "无", "type": "疾病"}], False)
    assert parse(spec, "疾病实体：发热", None) == ([], True)  # upstream asserts a list


def test_ner_metric_duplicates_ascii_colon_and_pooling():
    spec = task_spec("MedWB-NER")
    choices = ["疾病", "症状"]
    golds = ["疾病实体：发热，咳嗽", "疾病实体：肺炎"]
    preds = ["疾病实体：发热，发热\n症状实体:头痛", "疾病实体：肺炎"]
    stats = stats_of(spec, golds, preds, choices)
    # s1: gold {发热, 咳嗽}, pred {发热 (dup counted once), "症状实体:头痛"} -> tp 1, fp 1, fn 1
    # s2: tp 1
    assert stats == [(1, 1, 1), (1, 0, 0)]
    result = aggregate(spec, stats)
    # pooled tp 2, fp 1, fn 1: P = R = 2/3, F1 = 2/3
    assert result["score"] == pytest.approx(2 / 3)
    assert (result["precision"], result["recall"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert result["n"] == 2
    # per-sample F1s 0.5 and 1.0: their mean 0.75 is not the task score
    assert [sample_score(spec, s) for s in stats] == [pytest.approx(0.5), 1.0]


def test_ie_tp_zero_gives_zero_even_when_everything_is_empty():
    spec = task_spec("CMeEE-V2")
    stats = stats_of(spec, ["", "上述句子中没有实体"], ["", ""], ["疾病"])
    assert stats == [(0, 0, 0), (0, 0, 0)]
    result = aggregate(spec, stats)
    assert (result["score"], result["precision"], result["recall"]) == (0.0, 0.0, 0.0)
    assert sample_score(spec, (0, 0, 0)) == 0.0


# --- spo ---------------------------------------------------------------------------------

def test_spo_parse():
    spec = task_spec("CMeIE-V2")
    text = ("具有临床表现关系的头尾实体对如下：头实体为肺炎，尾实体为发热。头实体为肺炎，尾实体为咳嗽。\n"
            "具有药物治疗关系的头尾实体对如下：")
    assert parse(spec, text, ["临床表现", "药物治疗"]) == ([
        {"predicate": "临床表现", "subject": "肺炎", "object": "发热"},
        {"predicate": "临床表现", "subject": "肺炎", "object": "咳嗽"}], False)
    # No header: the predicate is the line minus two characters (garbage), as upstream.
    assert parse(spec, "头实体为肺炎，尾实体为发热。", []) == ([
        {"predicate": "体为肺炎，尾实体为发热。", "subject": "肺炎", "object": "发热"}], True)
    # A 。 inside an entity cuts it: 伊伐布雷。定 -> tail 伊伐布雷, then "定" has no pair.
    assert parse(spec, "具有药物治疗关系的头尾实体对如下：头实体为心衰，尾实体为伊伐布雷。定", [])[0] == [
        {"predicate": "药物治疗", "subject": "心衰", "object": "伊伐布雷"}]


def test_spo_metric():
    spec = task_spec("CMeIE")
    header = "具有临床表现关系的头尾实体对如下："
    gold = header + "头实体为肺炎，尾实体为发热。头实体为肺炎，尾实体为咳嗽。"
    pred = header + "头实体为肺炎，尾实体为发热。头实体为肺炎，尾实体为头痛。头实体为肺炎，尾实体为发热。"
    stats = stats_of(spec, [gold], [pred], [])
    assert stats == [(1, 1, 1)]  # 发热 matches (dup once), 头痛 FP, 咳嗽 FN
    assert aggregate(spec, stats)["score"] == pytest.approx(0.5)  # P = R = 1/2


# --- normalization -----------------------------------------------------------------------

def test_normalization_parse():
    spec = task_spec("CHIP-CDN")
    choices = ["高血压", "2型糖尿病", "冠心病"]
    assert parse(spec, "高血压， 2型糖尿病 ，高血压，感冒", choices) == (
        [{"entity": "高血压", "type": "normalization"}, {"entity": "2型糖尿病", "type": "normalization"}], False)
    assert parse(spec, "分析：高血压\n冠心病", choices) == ([{"entity": "冠心病", "type": "normalization"}], False)
    assert parse(spec, "高血压\n", choices) == ([], True)  # trailing newline: the last line is empty
    assert parse(spec, "没有对应的标准化实体", choices) == ([], True)


def test_normalization_metric():
    spec = task_spec("MedWB-CDN")
    choices = ["高血压", "2型糖尿病", "冠心病"]
    stats = stats_of(spec, ["高血压，冠心病", "冠心病"], ["高血压，2型糖尿病", "冠心病\n"], choices)
    assert stats == [(1, 1, 1), (0, 0, 1)]
    # pooled tp 1, fp 1, fn 2: P 1/2, R 1/3, F1 = 2(1/6)/(5/6) = 0.4
    result = aggregate(spec, stats)
    assert (result["score"], result["precision"], result["recall"]) == (
        pytest.approx(0.4), pytest.approx(0.5), pytest.approx(1 / 3))


# --- event -------------------------------------------------------------------------------

def test_event_parse():
    spec = task_spec("CHIP-CDEE")
    text = "上述句子中的临床发现事件如下：\n主体词：疼痛；发生状态：；描述词：剧烈，持续；解剖部位：腹部\n\n主体词：发热"
    empty = {"主体词": "", "发生状态": "", "描述词": [], "解剖部位": []}
    assert parse(spec, text, None) == ([
        {"主体词": "疼痛", "发生状态": "", "描述词": ["剧烈", "持续"], "解剖部位": ["腹部"]},
        empty,  # a blank line is an all-empty event
        {**empty, "主体词": "发热"}], False)
    assert parse(spec, "主体词：疼痛", None) == ([], True)  # no header: the only line is dropped
    assert parse(spec, "上述句子中没有临床发现事件。", None) == ([], True)


def test_event_metric_list_order_matters():
    spec = task_spec("CHIP-CDEE")
    h = "上述句子中的临床发现事件如下：\n"
    golds = [h + "主体词：疼痛；描述词：剧烈，持续", h + "主体词：发热；发生状态：否定"]
    preds = [h + "主体词：疼痛；描述词：持续，剧烈", h + "主体词：发热；发生状态：否定\n"]
    stats = stats_of(spec, golds, preds)
    # s1: list order differs -> fp 1, fn 1; s2: match + an all-empty event (trailing newline) -> tp 1, fp 1
    assert stats == [(0, 1, 1), (1, 1, 0)]
    # pooled tp 1, fp 2, fn 1: P 1/3, R 1/2, F1 = 2(1/6)/(5/6) = 0.4
    assert aggregate(spec, stats)["score"] == pytest.approx(0.4)


# --- attr --------------------------------------------------------------------------------

def test_attr_parse_and_fallback_labels():
    text = "上述对话中的症状如下：\n发热：阳性\n咳嗽：阴性 \n头痛：未知\n腹痛：阳性：轻"
    choices = ["阳性", "阴性", "其他"]
    # "阴性 " is not stripped, so it is not a choice; the 3-part line is skipped.
    assert parse(task_spec("CHIP-MDCFNPC"), text, choices) == ([
        {"entity": "发热", "attr": "阳性"}, {"entity": "咳嗽", "attr": "不标注"},
        {"entity": "头痛", "attr": "不标注"}], False)
    sr = "无法根据上下文确定病人是否患有该症状"
    assert parse(task_spec("IMCS-V2-SR"), text, choices)[0][1:] == [
        {"entity": "咳嗽", "attr": sr}, {"entity": "头痛", "attr": sr}]
    assert parse(task_spec("CHIP-MDCFNPC"), "发热：阳性", choices) == ([], True)  # header dropped


def test_attr_metric():
    spec = task_spec("CHIP-MDCFNPC")
    choices = ["阳性", "阴性"]
    stats = stats_of(spec, ["H\n发热：阳性\n咳嗽：阴性"], ["H\n发热：阳性\n咳嗽：阴性 "], choices)
    # pred {(阳性, 发热), (不标注, 咳嗽)} vs gold {(阳性, 发热), (阴性, 咳嗽)}: tp 1, fp 1, fn 1
    assert stats == [(1, 1, 1)]
    assert aggregate(spec, stats)["score"] == pytest.approx(0.5)


# --- causal ------------------------------------------------------------------------------

CAUSAL = ("因果关系三元组如下：\n头实体：吸烟；尾实体：肺癌\n"
          "条件关系三元组如下：\n头实体：糖尿病；尾三元组：头实体：感染；尾实体：败血症；关系：因果关系\n"
          "上下位关系三元组如下：\n头实体：肺炎；尾实体：呼吸系统疾病")


def test_causal_parse():
    spec = task_spec("CMedCausal")
    assert parse(spec, CAUSAL, None) == ([
        {"predicate": "因果关系", "subject": "吸烟", "object": "肺癌"},
        # head-first 条件关系 line: the subject keeps "；尾三元组：" (doc §2, symmetric on gold)
        {"predicate": "条件关系", "subject": "糖尿病；尾三元组：",
         "object": {"predicate": "因果关系", "subject": "感染", "object": "败血症"}},
        {"predicate": "上下位关系", "subject": "肺炎", "object": "呼吸系统疾病"}], False)
    # A malformed line (upstream: IndexError, whole run aborted) is skipped and flagged.
    assert parse(spec, "因果关系三元组如下：\n吸烟导致肺癌\n头实体：饮酒；尾实体：肝病", None) == (
        [{"predicate": "因果关系", "subject": "饮酒", "object": "肝病"}], True)
    # Nested relation other than 因果关系 (upstream: AssertionError).
    bad = "条件关系三元组如下：\n头实体：X；尾三元组：头实体：A；尾实体：B；关系：上下位关系"
    assert parse(spec, bad, None) == ([], True)
    assert parse(spec, "给定的文本没有指定关系的三元组。", None) == ([], False)
    stop = "因果关系三元组如下：\n头实体：A；尾实体：B\n给定的文本没有指定关系的三元组\n头实体：C；尾实体：D"
    assert parse(spec, stop, None) == ([{"predicate": "因果关系", "subject": "A", "object": "B"}], False)
    assert parse(spec, "头实体：A；尾实体：B", None) == ([{"predicate": None, "subject": "A", "object": "B"}], False)
    assert parse(spec, "不知道", None) == ([], True)


def test_causal_metric_and_nested_object_key_order():
    spec = task_spec("CMedCausal")
    pred = "因果关系三元组如下：\n头实体：吸烟；尾实体：肺癌\n头实体：吸烟；尾实体：肺气肿"
    stats = stats_of(spec, [CAUSAL, CAUSAL], [pred, CAUSAL])
    assert stats == [(1, 1, 2), (3, 0, 0)]
    # pooled tp 4, fp 1, fn 2: P 4/5, R 4/6, F1 = 2(0.8)(2/3)/(0.8 + 2/3) = 1.0667/1.4667 = 8/11
    assert aggregate(spec, stats)["score"] == pytest.approx(8 / 11)
    # The nested object is compared as JSON in insertion order (upstream behaviour).
    a = [{"predicate": "条件关系", "subject": "X", "object": {"predicate": "因果关系", "subject": "A", "object": "B"}}]
    b = [{"predicate": "条件关系", "subject": "X", "object": {"subject": "A", "predicate": "因果关系", "object": "B"}}]
    assert sample_stats(spec, a, a) == (1, 0, 0)
    assert sample_stats(spec, a, b) == (0, 1, 1)


# --- cls_macro / cls_weighted -------------------------------------------------------------

QIC = ["病情诊断", "治疗方案", "非上述类型"]


def test_cls_parse():
    spec = task_spec("KUAKE-QIC")
    assert parse(spec, "  病情诊断 \n", QIC) == ("病情诊断", False)
    assert parse(spec, "我认为是病情诊断", QIC) == ("我认为是病情诊断", True)
    assert parse(spec, "", QIC) == ("", True)
    assert parse(spec, "随便", None) == ("随便", False)  # no choices: only "" fails
    sts = task_spec("CHIP-STS")
    assert parse(sts, "相同", ["是的", "不是"]) == ("是的", False)
    assert parse(sts, "不同 ", ["是的", "不是"]) == ("不是", False)
    assert parse(sts, "差不多", ["是的", "不是"]) == ("差不多", True)
    assert parse(sts, "相同", ["相同", "不同"]) == ("是的", False)  # raw reply is a choice


def test_cls_macro_empty_prediction_default_and_stray_label():
    spec = task_spec("MedWB-QIC")
    golds = ["病情诊断", "病情诊断", "治疗方案", "非上述类型"]
    preds = ["病情诊断", "", "治疗方案", "我不知道"]
    stats = stats_of(spec, golds, preds, QIC)
    assert [p for _, p in stats] == ["病情诊断", "非上述类型", "治疗方案", "我不知道"]  # "" -> default
    result = aggregate(spec, stats)
    # classes 病情诊断: P 1, R 1/2, F 2/3; 治疗方案: F 1; 非上述类型: F 0; 我不知道 (stray): F 0
    # macro F1 = (2/3 + 1 + 0 + 0)/4 = 5/12; macro P = (1+1+0+0)/4; macro R = (1/2+1+0+0)/4
    assert result["score"] == pytest.approx(5 / 12)
    assert result["precision"] == pytest.approx(0.5)
    assert result["recall"] == pytest.approx(0.375)
    assert result["accuracy"] == pytest.approx(0.5)
    assert [sample_score(spec, s) for s in stats] == [1.0, 0.0, 1.0, 0.0]


def test_weighted_f1_is_not_accuracy_and_stray_labels_cost_macro_only():
    golds = ["是的", "相同", "是的", "不是"]  # 相同 -> 是的 on gold too
    preds = ["相同", "", "不同", "不是"]  # "" -> default 是的; 不同 -> 不是
    weighted = task_spec("CHIP-STS")
    stats = stats_of(weighted, golds, preds, ["是的", "不是"])
    assert stats == [("是的", "是的"), ("是的", "是的"), ("是的", "不是"), ("不是", "不是")]
    result = aggregate(weighted, stats)
    # doc's worked example gold [A,A,A,B], pred [A,A,B,B]: F(A) = 0.8, F(B) = 2/3,
    # weighted = 0.75*0.8 + 0.25*(2/3) = 0.76667; accuracy 0.75
    assert result["score"] == pytest.approx(0.75 * 0.8 + 0.25 * 2 / 3)
    assert result["score"] == pytest.approx(0.766667, abs=1e-6)
    assert result["recall"] == pytest.approx(0.75) and result["accuracy"] == pytest.approx(0.75)
    # Same pairs, macro: (0.8 + 2/3)/2 = 0.73333
    macro = task_spec("CHIP-CTC")
    assert aggregate(macro, stats)["score"] == pytest.approx((0.8 + 2 / 3) / 2)
    # A stray label X instead of the wrong B: gold [A,A,A,B], pred [A,A,X,B]
    # F(A) = 2(1)(2/3)/(5/3) = 0.8, F(B) = 1, F(X) = 0 (support 0)
    stray = [("A", "A"), ("A", "A"), ("A", "X"), ("B", "B")]
    assert aggregate(macro, stray)["score"] == pytest.approx((0.8 + 1 + 0) / 3)  # 0.6: lowered
    assert aggregate(weighted, stray)["score"] == pytest.approx(0.75 * 0.8 + 0.25 * 1)  # 0.85: X weighs 0


def test_empty_gold_label_is_refused_like_the_official_scorer():
    with pytest.raises(MedwbError, match="gold label is empty"):
        sample_stats(task_spec("CHIP-STS"), "", "是的")


# --- diagnosis ---------------------------------------------------------------------------

def test_diagnosis_parse_and_macro_f1_with_empty_label():
    spec = task_spec("MedWB-DDx")
    assert parse(spec, "初步诊断：社区获得性肺炎 \n诊断依据：发热", None) == ("社区获得性肺炎", False)
    assert parse(spec, "诊断依据：发热\n初步诊断：肺炎\n初步诊断：胃炎", None) == ("肺炎", False)
    assert parse(spec, "考虑肺炎", None) == ("", True)
    assert parse(spec, " 初步诊断：肺炎", None) == ("", True)  # must start the line
    golds = ["初步诊断：肺炎", "初步诊断：肺炎", "初步诊断：胃炎"]
    preds = ["初步诊断：肺炎\n诊断依据：咳嗽", "我觉得是肺炎", "初步诊断：胃炎"]
    result = score_task(spec, golds, preds)
    # pred labels [肺炎, "", 胃炎]; classes 肺炎: P 1, R 1/2, F 2/3; 胃炎: F 1; "" (never gold): F 0
    # macro F1 = (2/3 + 1 + 0)/3 = 5/9
    assert result["score"] == pytest.approx(5 / 9)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert (result["parse_failures"], result["gold_parse_failures"], result["n"]) == (1, 0, 3)


# --- ROUGE families ----------------------------------------------------------------------

def test_basic_tokenize_by_hand():
    tok = scoring.basic_tokenize
    assert tok("Hello, 世界! CRP 37.5℃") == ["hello", ",", "世", "界", "!", "crp", "37", ".", "5℃"]
    assert tok("口服ABC 2mg，Café") == ["口", "服", "abc", "2mg", "，", "cafe"]
    assert tok("a\x00b\u200bc\td") == ["abc", "d"]  # NUL and U+200B (Cf) dropped; tab splits
    assert tok("  \n") == []
    assert scoring.rouge_text("") == "无 。"
    assert scoring.rouge_text(" 多喝水。") == "多 喝 水 。"


TRICKY = [
    "Hello, 世界! CRP 37.5℃", "口服ABC 2mg，Café", "（发热）、咳嗽；体温38.5°C。“引号”『书名』",
    "\u3000全角空格\u00a0nbsp", "ＡＢＣ１２３ｄｅｆ", "İstanbul ß ﬁ Ǆǅ Ⅻ ½", "e\u0301 É x\u0300\u0301y \u0301",
    "\uf900\U0002F800\U00020000\u3400", "한국어 にほんご カタカナ", "emoji 😀👍 ok", "zero\u200bwidth",
    "line\u2028sep\u2029para", "tab\tnew\nline\r\nend", "$^`~|<=>+@#", "a\x00b\ufffdc\x7fd\x1ce",
    "", "   ", "-- ... ?!", "COVID-19病毒", "37.5°c→38℃↑", "α-干扰素β", "\u00ad软连字符",
]


@pytest.mark.bigdl
def test_basic_tokenize_matches_transformers_basic_tokenizer(tmp_path):
    """Same tokens as BasicTokenizer(tokenize_chinese_chars=True) of transformers 4.31 (bigdl env)."""
    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps(TRICKY), encoding="utf-8")
    code = (
        "import json\n"
        "from transformers.models.bert.tokenization_bert import BasicTokenizer\n"
        f"strings = json.loads(open({str(strings)!r}, encoding='utf-8').read())\n"
        "tok = BasicTokenizer(tokenize_chinese_chars=True)\n"
        "from medwb.child import write_result; write_result([tok.tokenize(s) for s in strings])\n")
    expected = run_python("bigdl", code, timeout=300)
    assert [scoring.basic_tokenize(s) for s in TRICKY] == expected


def test_report_parse():
    spec = task_spec("IMCS-V2-MRG")
    text = ("以下是报告：\n主诉：咳嗽三天\n现病史：患者咳嗽。\n 诊断：感冒\n建议：多喝水\n"
            "建议：休息\n辅助检查：血常规 辅助检查：胸片\n既往史：")
    # " 诊断" has a leading space: not matched; later 建议 wins; text after the last key;
    # an empty section is present as "".
    assert parse(spec, text, None) == (
        {"主诉": "咳嗽三天", "现病史": "患者咳嗽。", "辅助检查": "胸片", "既往史": "", "建议": "休息"}, False)
    assert parse(spec, "主诉：咳嗽", None) == ({}, True)  # the first line is the header, dropped


def test_report_metric_pools_pairs_and_missing_section_scores_against_empty():
    spec = task_spec("MedWB-MRG")
    golds = ["H\n主诉：咳嗽\n诊断：感冒", "H\n主诉：发热\n现病史：", "H\n主诉：头痛"]
    preds = ["H\n主诉：咳嗽\n建议：休息", "H\n主诉：低热", "H\n主诉：头痛"]
    stats = stats_of(spec, golds, preds)
    assert stats == [[("咳 嗽", "咳 嗽"), ("无 。", "感 冒")],  # 诊断 missing -> "" -> 无 。; 建议 ignored
                     [("低 热", "发 热"), ("无 。", "无 。")],  # empty gold vs missing: 无 。 both
                     [("头 痛", "头 痛")]]
    # ROUGE-L F per pair: 咳嗽 1 (P = R = 1); 感冒 0; 低热/发热 LCS 1 -> P = R = 1/2, F 0.5;
    # 无 。 vs 无 。 1; 头痛 1. Pooled mean over 5 pairs = 3.5/5 = 0.7.
    pair_f = [f_rouge(1, 1), 0.0, f_rouge(0.5, 0.5), f_rouge(1, 1), f_rouge(1, 1)]
    result = aggregate(spec, stats)
    assert result["score"] == pytest.approx(sum(pair_f) / 5, abs=1e-6)
    assert result["score"] == pytest.approx(0.7, abs=1e-6)
    assert result["pairs"] == 5
    # Per-sample means 0.5, 0.75, 1.0: their mean 0.75 differs from the pooled 0.7.
    assert [sample_score(spec, s) for s in stats] == pytest.approx([0.5, 0.75, 1.0], abs=1e-6)


def test_rouge_with_no_pair_gives_no_score():
    spec = task_spec("IMCS-V2-MRG")
    result = aggregate(spec, [[], []])
    assert result["score"] is None and "no (sample, gold section) pair" in result["reason"]
    assert sample_score(spec, []) is None


def test_sections_parse():
    spec = task_spec("MedWB-DSR")
    text = ("出院诊断：肺炎\n入院情况：患者咳嗽，\n发热三天。诊疗经过：抗感染治疗\n出院医嘱：\n1. 休息\n"
            "出院诊断：社区获得性肺炎")
    assert parse(spec, text, None) == ({"出院诊断": "社区获得性肺炎", "入院情况": "患者咳嗽，\n发热三天。",
                                        "诊疗经过": "抗感染治疗", "出院医嘱": "1. 休息"}, False)
    assert parse(spec, "谢谢", None) == ({}, True)
    assert parse(spec, "出院情况:好转", None) == ({}, True)  # ASCII colon is no heading


def test_sections_metric():
    spec = task_spec("MedWB-DSR")
    golds = ["出院诊断：肺炎\n出院情况：好转", "出院医嘱：口服ABC 2mg"]
    preds = ["出院诊断：肺炎\n出院医嘱：休息", "出院医嘱：口服abc 2 mg"]
    stats = stats_of(spec, golds, preds)
    assert stats == [[("肺 炎", "肺 炎"), ("无 。", "好 转")], [("口 服 abc 2 mg", "口 服 abc 2mg")]]
    # pairs: 1; 0; tokens pred [口 服 abc 2 mg] vs gold [口 服 abc 2mg]: LCS 3, P 3/5, R 3/4, F 2/3
    expected = (f_rouge(1, 1) + 0 + f_rouge(0.6, 0.75)) / 3
    assert aggregate(spec, stats)["score"] == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(5 / 9, abs=1e-6)


def test_free_text_parse_and_metric():
    spec = task_spec("MedDG")
    assert parse(spec, " 多喝水。 ", None) == ("多喝水。", False)
    assert parse(spec, "  ", None) == ("", True)
    golds = ["口服ABC 2mg", "多喝水", ""]
    preds = ["口服abc 2 mg", "", ""]
    result = score_task(spec, golds, preds)
    # F: 2/3 (as above); 无 。 vs 多 喝 水: 0; 无 。 vs 无 。: 1. Mean (2/3 + 0 + 1)/3 = 5/9
    assert result["score"] == pytest.approx((f_rouge(0.6, 0.75) + 0 + f_rouge(1, 1)) / 3, abs=1e-6)
    # ROUGE-1 uses unique unigrams: same overlaps here, so also 5/9
    assert result["rouge-1"] == pytest.approx(5 / 9, abs=1e-6)
    assert (result["parse_failures"], result["gold_parse_failures"], result["n"]) == (2, 1, 3)
    # MedDG: one pair per sample, so the task score is the mean of the sample scores
    stats = stats_of(spec, golds, preds)
    assert sum(sample_score(spec, s) for s in stats) / 3 == pytest.approx(result["score"])


# --- score_task / overall ----------------------------------------------------------------

def test_score_task_counts_parse_failures_and_checks_lengths():
    spec = task_spec("CMeEE-V2")
    result = score_task(spec, ["疾病实体：发热"], ["症状实体:头痛"], [["疾病", "症状"]])
    assert (result["score"], result["parse_failures"], result["tp"], result["fp"], result["fn"]) == (0.0, 1, 0, 1, 1)
    with pytest.raises(MedwbError, match="1 gold texts but 2 predictions"):
        score_task(spec, ["a"], ["a", "b"])


def test_overall_is_the_mean_times_100():
    assert scoring.overall({"CMeEE-V2": 0.5, "CHIP-STS": 0.8, "MedDG": 0.2}) == pytest.approx(50.0)
    with pytest.raises(MedwbError, match="MedDG have no score"):
        scoring.overall({"CMeEE-V2": 0.5, "MedDG": None})
    with pytest.raises(MedwbError, match="no task scores"):
        scoring.overall({})


# --- rule sets: official (current) and ccks2023, on the same predictions -----------------
# Each case: (task, gold, prediction, answer_choices, official score, ccks2023 score), worked
# out by hand from the rules in docs/evaluation/promptcblue-official-scoring.md "Rule sets".
RULE_CASES = [
    # ASCII comma inside a mention list: one wrong mention under the official rules.
    ("CMeEE-V2", "上述句子中的实体包含：\n疾病实体：感冒\n症状实体：咳嗽，发热",
     "上述句子中的实体包含：\n疾病实体：感冒\n症状实体：咳嗽,发热", ["疾病", "症状"], 0.4, 1.0),
    ("CHIP-CDN", "主动脉缩窄，心功能不全", "主动脉缩窄,心功能不全", ["主动脉缩窄", "心功能不全"], 0.0, 1.0),
    # A choice that holds an ASCII comma: ccks2023 splits it (choices are not normalised).
    ("CHIP-CDN", "X,Y", "X,Y", ["X,Y"], 1.0, 0.0),
    ("IMCS-V2-SR", "病人的症状判断结果为：\n咳嗽：患有该症状\n发热：没有患有该症状",
     "病人的症状判断结果为：\n咳嗽:患有该症状\n发热：没有患有该症状",
     ["患有该症状", "没有患有该症状", "无法根据上下文确定病人是否患有该症状"], 2 / 3, 1.0),
    # The MDCFNPC fallback: a long label (a real class) under ccks2023, 不标注 now.
    ("CHIP-MDCFNPC", "上述对话中的实体及其阴阳性判断如下：\n腹泻：无实际意义的不标注或者和病人当前的状态独立不标注",
     "上述对话中的实体及其阴阳性判断如下：\n腹泻：不标注",
     ["阳性", "阴性", "其他", "无实际意义的不标注或者和病人当前的状态独立不标注"], 0.0, 1.0),
    ("MedDG", "多喝水，休息。", "多喝水,休息。", None, 6 / 7, 1.0),
    # Labels hold no :,; so a classification task scores the same under both.
    ("KUAKE-QIC", "病情诊断", "病情诊断", ["病情诊断", "治疗方案"], 1.0, 1.0),
]


@pytest.mark.parametrize("task,gold,pred,choices,official,ccks", RULE_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(RULE_CASES)])
def test_the_two_rule_sets_on_the_same_predictions(task, gold, pred, choices, official, ccks):
    for rules, expected in (("official", official), ("ccks2023", ccks)):
        got = score_task(task_spec(task, rules=rules), [gold], [pred], [choices])["score"]
        assert got == pytest.approx(expected, abs=1e-6), (rules, got)


def test_ccks2023_rules_qtr_empty_label_tasks_and_the_100_replacement_cap():
    # An empty QTR label becomes a label that is no class under ccks2023 (always wrong).
    golds, preds = ["完全不匹配或者没有参考价值", "部分匹配"], ["", "部分匹配"]
    assert score_task(task_spec("KUAKE-QTR"), golds, preds)["score"] == pytest.approx(1.0)
    assert score_task(task_spec("KUAKE-QTR", rules="ccks2023"), golds, preds)["score"] == pytest.approx(0.5)
    with pytest.raises(MedwbError, match="CMedCausal.*--rules official"):
        task_spec("CMedCausal", rules="ccks2023")
    with pytest.raises(MedwbError, match="rules 'ccks2024' is unknown"):
        task_spec("MedDG", rules="ccks2024")
    spec = task_spec("MedDG", rules="ccks2023")
    assert scoring.normalize_reply(spec, "," * 130) == "，" * 100 + "," * 30  # as str.replace(.., 100)
    assert scoring.normalize_reply(task_spec("MedDG"), "a:b") == "a:b"
