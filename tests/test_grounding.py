"""Grounding: numbers with units in an answer, checked against the record (exact cases)."""
from medwb.quality import grounding


def test_findings_are_numbers_with_units_only():
    text = "初步诊断：X\n诊断依据：血压90/56mmHg，WBC 14.2×10^9/L，T 38.5℃，HbA1c 7.2%，病程3天。\n1. 急性阑尾炎：第2点"
    assert grounding.findings(text) == ["90/56mmHg", "14.2×10^9/L", "38.5℃", "7.2%", "3天"]
    assert grounding.findings("孕2产1，1. 鉴别") == []  # bare numbers (counts, list numbering) are not findings


def test_grounded_ignores_spaces_and_names_but_not_digits():
    source = "体格检查：BP 90/56 mmHg，P 112次/分。辅助检查：后穹窿穿刺抽出不凝血15ml。CA125 18U/ml"
    assert grounding.ungrounded("血压90/56mmHg，脉搏112次/分", source) == []
    assert grounding.ungrounded("抽出不凝血5ml", source) == ["5ml"]  # 5ml is not 15ml
    assert grounding.ungrounded("CA125 18U/ml", source) == []
    assert grounding.ungrounded("体温38.5℃，血红蛋白86g/L", source) == ["38.5℃", "86g/L"]


def test_section_and_pooled_counts():
    answer = "初步诊断：异位妊娠\n诊断依据：停经6周；血β-hCG 2860IU/L\n鉴别诊断：\n1. 阑尾炎：血糖33.3mmol/L"
    basis = grounding.section(answer, "诊断依据", ("鉴别诊断",))
    assert basis.strip() == "停经6周；血β-hCG 2860IU/L"
    assert grounding.section(answer, "出院诊断") == ""
    pairs = [(basis, "停经6周，血β-hCG 2860IU/L"), ("复查3天后", "无"), ("没有数字", "x")]
    assert grounding.counts(pairs) == (2, 3)
