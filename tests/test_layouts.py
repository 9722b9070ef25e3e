"""Training cases in the layouts doctors paste (medwb.tasks.layouts): every layout keeps the
case's facts, so the corpus's answer stays grounded, and the prompt is the apps' free-text one."""
import random

import pytest

from medwb.quality import grounding
from medwb.tasks import corpus, layouts, prompts


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_every_layout_keeps_what_the_answer_copies(layout):
    rng = random.Random(layout)
    for case in corpus.heldout_cases("varied")[:24]:
        for task in corpus.TASKS:
            prompt = layouts.prompt(case, task, layout, rng)
            answer = corpus.diagnosis_target(case) if task == "diagnosis" else corpus.discharge_target(case)
            # Every finding the corpus's own prompt grounds (its differentials' textbook
            # figures are in neither) is in the layout too.
            missing = set(grounding.ungrounded(answer, prompt)) - set(
                grounding.ungrounded(answer, corpus.task_prompt(case, task)))
            assert grounding.findings(answer) and not missing, (layout, task, missing)
            head = (prompts.DIAGNOSIS_PROMPT_FREE_TEXT if task == "diagnosis" else prompts.DISCHARGE_PROMPT_PASTED)
            assert prompt.startswith(head.split("{")[0]) and case.chief_complaint in prompt


def test_layouts_differ_from_the_corpus_template_and_from_each_other():
    case, rng = corpus.heldout_cases("standard")[0], random.Random(0)
    texts = {layout: layouts.render(case, "discharge", layout, rng) for layout in layouts.LAYOUTS}
    assert len(set(texts.values())) == len(texts)
    assert all("体格检查：" + case.physical_exam not in t for layout, t in texts.items() if layout != "shuffled_headings")
    with pytest.raises(ValueError, match="use one of"):
        layouts.render(case, "diagnosis", "haiku", rng)
