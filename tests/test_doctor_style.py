"""The held-out set written the way doctors write (issue #36): its shape, that it is not the
generator's, and the scoring of task format, primary diagnosis and grounding with intervals."""
import pytest

from medwb.eval import doctor_style
from medwb.quality.intervals import wilson
from medwb.tasks import corpus


@pytest.fixture(scope="module")
def samples():
    return doctor_style.load()


def test_one_case_per_disease_and_task_none_naming_its_diagnosis(samples):
    diseases = set(corpus.diagnosis_vocabulary())
    for task in ("diagnosis", "discharge"):
        mine = [s for s in samples if s["task_type"] == task]
        assert sorted(s["disease"] for s in mine) == sorted({s["disease"] for s in mine}) and len(mine) == 36
        assert {s["disease"] for s in mine} <= diseases
    for s in samples:
        assert all(f in s["case_text"] for f in s["key_findings"]), s["sample_id"]
        if s["task_type"] == "diagnosis":
            assert s["disease"] not in s["case_text"], s["sample_id"]
    assert len({s["style"] for s in samples}) >= 6


def test_no_case_is_a_generated_one(samples):
    """Written apart from the generator: no case shares a sentence with the generated sets."""
    generated = set()
    for name in corpus.HELDOUT_SETS:
        for c in corpus.heldout_cases(name):
            generated.update(x for x in corpus.task_prompt(c, "diagnosis").replace("\n", "。").split("。") if len(x) > 12)
    sentences = [(s["sample_id"], x) for s in samples for x in s["case_text"].replace("\n", "。").split("。")
                 if len(x) > 12]
    shared = [(sid, x) for sid, x in sentences if x in generated]
    # A stock phrase may coincide (one did: 直肠指检：指套染黑色柏油样便); a copied case would not.
    assert len(shared) <= 0.01 * len(sentences) and len({sid for sid, _ in shared}) == len(shared), shared


def _answer(disease: str, other: str) -> str:
    return (f"初步诊断：{disease}\n诊断依据：体温38.5℃，WBC 15.2×10^9/L。\n"
            f"鉴别诊断：\n1. {other}：不支持。")


def test_scoring_counts_task_format_primary_and_grounding(samples):
    dx = [s for s in samples if s["task_type"] == "diagnosis"][:4]
    dc = [s for s in samples if s["task_type"] == "discharge"][:2]
    outputs = [_answer(dx[0]["disease"], dx[1]["disease"]),           # right, in format
               _answer(dx[0]["disease"], dx[2]["disease"]),           # wrong first name, in format
               "出院诊断：x\n入院情况：\n诊疗经过：\n出院情况：\n出院医嘱：",  # a discharge record: off task
               "不是",                                                 # off task, nothing named
               "出院诊断：x\n入院情况：y\n诊疗经过：z\n出院情况：w\n出院医嘱：v",  # in format
               "初步诊断：x\n诊断依据：y"]                                # off task
    f = doctor_style.score(dx + dc, outputs)
    assert f["diagnosis"]["task_format"] == {"rate": 0.5, "ci95": wilson(2, 4), "n": 4}
    assert f["diagnosis"]["primary"]["rate"] == 0.25 and f["diagnosis"]["top3"]["rate"] == 0.25
    assert f["discharge"]["task_format"]["rate"] == 0.5 and f["discharge"]["sections"]["rate"] == 0.5
    g = f["diagnosis"]["grounding"]
    assert g["findings"] == 4 and g["ci95"][0] <= g["rate"] <= g["ci95"][1]
    text = doctor_style.format_figures(f)
    assert "keeps to the task 50.0%" in text and "4 findings" in text


def test_wilson_interval_is_scipys():
    assert wilson(72, 72)[0] == pytest.approx(0.9493, abs=1e-4) and wilson(0, 0) == [0.0, 1.0]


@pytest.mark.slow
def test_the_demo_model_answers_doctor_written_cases_end_to_end(samples, demo_model_dir):
    """The path `medwb demo-model --doctor-style` takes, on a few cases of each task (all 72
    take two minutes; the figures are in docs/demo-model.md)."""
    from medwb.backends.pytorch import PyTorchBackend
    from medwb.models.demo_model import RECIPE
    few = [s for s in samples if s["task_type"] == "diagnosis"][:3] + \
        [s for s in samples if s["task_type"] == "discharge"][:2]
    f = doctor_style.evaluate(PyTorchBackend.load(demo_model_dir, "float32"), RECIPE["eval"]["max_new_tokens"],
                              samples=few)
    assert f["n_cases"] == 5 and len(f["examples"]) == 5 and all(f["examples"].values())
    assert f["diagnosis"]["task_format"]["n"] == 3 and f["discharge"]["sections"]["n"] == 2
    for task in ("diagnosis", "discharge"):
        g = f[task]["grounding"]
        assert g["findings"] > 0 and g["ci95"][0] <= g["rate"] <= g["ci95"][1]


def test_the_training_layouts_are_not_the_yardstick(samples):
    """Stage 2 of the candidate model trains on cases in doctors' layouts (tasks.layouts):
    generated from the knowledge table, they share no more than a stock phrase with the
    hand-written set that measures them."""
    import random

    from medwb.tasks import layouts
    rng, generated = random.Random(0), set()
    for c in corpus.heldout_cases("standard"):
        for layout in layouts.LAYOUTS:
            text = layouts.render(c, "discharge", layout, rng)
            generated.update(x.strip("-•·0123456789. ") for x in text.replace("\n", "。").split("。"))
    sentences = [x for s in samples for x in s["case_text"].replace("\n", "。").split("。") if len(x) > 12]
    shared = [x for x in sentences if x in generated]
    assert len(shared) <= 0.01 * len(sentences), shared
