"""The bundled PromptCBLUE-format evaluation set: generated, exact, held out from training."""
import collections
import json

from medwb.eval import dataset, scoring
from medwb.models import demo_model
from medwb.tasks import corpus, evalset


def test_shipped_file_matches_the_generator():
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in evalset.test_records())
    assert evalset.EVAL_FILE.read_text(encoding="utf-8") == text, "data/eval is stale: run `medwb data`"


def test_six_task_families_every_department_and_gold_that_parses():
    data = dataset.load(evalset.EVAL_FILE)
    by_task = data.by_task()
    families = {scoring.task_spec(t).family for t in by_task}
    assert len(families) >= 6 and set(by_task) == set(evalset.TASKS)
    n_diseases = len(corpus.load_knowledge())
    assert {t: len(s) for t, s in by_task.items()} == {
        t: n_diseases if t == "MedWB-CDN" else 2 * n_diseases for t in evalset.TASKS}
    for task, samples in by_task.items():
        spec = scoring.task_spec(task)
        for s in samples:
            answer, failed = scoring.parse(spec, s.target, s.answer_choices)
            assert not failed and answer, (task, s.sample_id)
    departments = collections.Counter(s.target for s in by_task["MedWB-QIC"])
    assert len(departments) == len({d.department for d in corpus.load_knowledge()})
    assert collections.Counter(s.target for s in by_task["MedWB-STS"]) == {"是的": n_diseases, "不是": n_diseases}


def test_labels_are_exact_by_construction():
    records = {r["sample_id"]: r for r in evalset.test_records()}
    ner = records["MedWB-NER-h020001"]
    # Hand-checked: the text names one disease of the table and four numbers with units.
    assert "急性阑尾炎" in ner["input"]
    assert ner["target"] == "上述句子中的实体包含：\n疾病实体：急性阑尾炎\n数值实体：38.6℃，102次/分，78mg/L，42mm/h"
    cdn = records["MedWB-CDN-h000000"]
    assert cdn["input"].startswith("诊断原文：宫外孕破裂?") and cdn["target"].endswith("\n异位妊娠")
    assert "异位妊娠" in cdn["answer_choices"] and len(cdn["answer_choices"]) == 4
    assert records["MedWB-QIC-h000000"]["target"] == "妇科"
    assert records["MedWB-DDx-h000000"]["target"].startswith("初步诊断：异位妊娠\n")


def test_disjoint_from_the_demo_models_training_data():
    train, heldout = demo_model.training_cases()
    test_sigs = {c.signature() for c in corpus.heldout_cases("standard")}
    assert test_sigs.isdisjoint({c.signature() for c in train})
    texts = demo_model.continued_texts()
    trained_inputs = {p for _, p, _ in texts}
    from medwb.tasks import prompts
    records = evalset.test_records()
    assert not any(prompts.render_chat([{"role": "user", "content": r["input"]}]) in trained_inputs
                   for r in records)
    # The colloquial name each disease keeps for the test set is never trained on.
    kept = {evalset.alias_split(d)[1] for d in corpus.load_knowledge()} - {None}
    cdn_prompts = [p for t, p, _ in texts if t == "MedWB-CDN"]
    assert kept and not any(f"诊断原文：{a}\n" in p for a in kept for p in cdn_prompts)
    assert demo_model.continued_texts() == texts  # deterministic
