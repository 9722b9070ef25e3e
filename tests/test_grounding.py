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


# ---------------------------------------------------------------- flags for the doctor
SOURCE = ("入院诊断：异位妊娠\n病程记录：2026年11月18日急诊全麻下行腹腔镜左侧输卵管切除术。术后予头孢呋辛1.5g"
          "静脉滴注预防感染。第3日复查血β-hCG降至326IU/L。\n出院医嘱：口服琥珀酸亚铁0.1g每日三次纠正贫血。")


def test_a_faithful_copy_raises_no_flag():
    from medwb.quality import grounding
    draft = ("出院诊断：异位妊娠\n诊疗经过：2026年11月18日行腹腔镜左侧输卵管切除术，术后予头孢呋辛1.5g预防感染，"
             "复查血β-hCG 326IU/L。\n出院医嘱：\n1. 口服琥珀酸亚铁0.1g每日三次。")
    assert grounding.flags(draft, SOURCE, ["异位妊娠", "急性阑尾炎"], "异位妊娠") == []


def test_invented_dose_drug_date_and_diagnosis_are_flagged_exactly():
    from medwb.quality import grounding
    draft = ("出院诊断：急性阑尾炎\n诊疗经过：2026年11月20日手术，术后予阿莫西林0.5g口服。\n"
             "出院医嘱：口服琥珀酸亚铁0.2g每日三次。")
    got = [(f.kind, f.text, draft[f.start:f.end]) for f in
           grounding.flags(draft, SOURCE, ["异位妊娠", "急性阑尾炎"], "急性阑尾炎")]
    assert got == [("diagnosis", "急性阑尾炎", "急性阑尾炎"),
                   ("date", "2026年11月20日", "2026年11月20日"),  # invented date (the source says 18日)
                   ("drug", "阿莫西林", "阿莫西林"),              # a drug the record never gave
                   ("value", "0.5g", "0.5g"),                     # ... and its dose
                   ("value", "0.2g", "0.2g")]                     # a known drug at an invented dose
    assert grounding.drug_name("术后予头孢呋辛") == "头孢呋辛" and grounding.drug_name("继续口服阿司匹林") == "阿司匹林"


def test_discharge_sections_are_parsed_in_any_order_and_with_heading_variants():
    from medwb.tasks import workflow
    draft = ("【出院情况】患者无腹痛。\n1. 出院诊断: 异位妊娠\n住院经过：行腹腔镜手术。\n"
             "出院建议：\n1. 每周复查血β-hCG。\n2. 禁盆浴1个月。\n入院情况：\n")
    sections = workflow.parse_sections(draft)
    assert sections == {"出院诊断": "异位妊娠", "入院情况": "", "诊疗经过": "行腹腔镜手术。",
                        "出院情况": "患者无腹痛。", "出院医嘱": "1. 每周复查血β-hCG。\n2. 禁盆浴1个月。"}
    assert workflow.section_status(sections)["入院情况"] == "empty"
    assert workflow.section_status(workflow.parse_sections("出院诊断：异位妊娠"))["出院医嘱"] == "missing"
    # A heading word inside a sentence is not a heading.
    assert workflow.parse_sections("出院诊断：异位妊娠，出院医嘱另附")["出院医嘱"] is None
