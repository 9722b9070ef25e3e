"""Loading PromptCBLUE-format JSON lines (medwb.eval.dataset): good files, each kind of bad
line with its ``file:line: reason``, strict and lenient modes, task_map."""
import json

import pytest

from medwb.eval.dataset import REQUIRED, Dataset, EvalDataError, Sample, load


def record(sample_id="s1", task="CHIP-STS", target="是的", choices=("是的", "不是"), **extra):
    return {"input": "两句话意思相同吗？", "target": target,
            "answer_choices": list(choices) if choices is not None else None,
            "task_type": "cls", "task_dataset": task, "sample_id": sample_id, **extra}


def write(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) for x in lines) + "\n",
                    encoding="utf-8")
    return path


def test_valid_file_loads_in_order_with_extras_and_blank_lines(tmp_path):
    path = write(tmp_path, [
        record("s1", case={"disease": "肺炎"}),
        "",
        record("dx-1", task="MedWB-DDx", target="初步诊断：肺炎", choices=None),
        "   ",
        record("s2", target="不是"),
        record("n1", task="CMeEE-V2", target="疾病实体：发热", choices=["疾病"]),
    ])
    data = load(path)
    assert isinstance(data, Dataset) and data.path == path and data.problems == []
    assert [s.sample_id for s in data.samples] == ["s1", "dx-1", "s2", "n1"]
    assert data.tasks() == ["CHIP-STS", "MedWB-DDx", "CMeEE-V2"]
    assert {k: [s.sample_id for s in v] for k, v in data.by_task().items()} == {
        "CHIP-STS": ["s1", "s2"], "MedWB-DDx": ["dx-1"], "CMeEE-V2": ["n1"]}
    first = data.samples[0]
    assert first == Sample(sample_id="s1", task_dataset="CHIP-STS", task_type="cls", input="两句话意思相同吗？",
                           target="是的", answer_choices=("是的", "不是"))
    assert first.extra == {"case": {"disease": "肺炎"}}
    assert data.samples[1].answer_choices is None
    assert data.spec("MedWB-DDx").family == "diagnosis"
    assert len(data) == 4
    assert REQUIRED == ("input", "target", "answer_choices", "task_type", "task_dataset", "sample_id")


BAD_LINES = [
    ("{bad json", "not JSON ("),
    ("[1, 2]", "not a JSON object (got list)"),
    ({k: v for k, v in record("m").items() if k not in ("target", "sample_id")},
     "missing field(s) target, sample_id"),
    ({**record("c1"), "answer_choices": "是的,不是"}, "answer_choices must be a list of strings or null"),
    ({**record("c2"), "answer_choices": ["是的", 1]}, "answer_choices must be a list of strings or null"),
    ({**record("t1"), "input": 3}, "field(s) input must be strings (got input=int)"),
    ({**record("t2"), "sample_id": 7}, "field(s) sample_id must be strings (got sample_id=int)"),
    (record("u1", task="Foo"), 'task_dataset "Foo" is unknown: map it to an official task or a family with '
                               'task_map={"Foo": "<official task or family>"} (CLI: --task-map Foo=FAMILY)'),
    (record("x1", task="Text2DT", choices=None), "task 'Text2DT' is not supported: the decision-tree metric"),
    (record("ok"), "sample_id 'ok' repeats line 1"),
    (record("e1", task="CMeEE-V2", target="疾病实体：发热", choices=None),
     "answer_choices is null but task 'CMeEE-V2' (ner) reads its labels from it"),
    (record("g1", target=""), "target gives an empty gold label"),
    (record("g2", task="MedWB-DDx", target="考虑肺炎", choices=None), "target gives an empty gold label"),
]


@pytest.mark.parametrize("bad,reason", BAD_LINES, ids=[r[:24] for _, r in BAD_LINES])
def test_each_bad_line_kind_is_reported_with_file_and_line(tmp_path, bad, reason):
    path = write(tmp_path, [record("ok"), bad])
    with pytest.raises(EvalDataError) as err:
        load(path)
    [problem] = err.value.problems
    assert problem.startswith(f"{path}:2: {reason}"), problem
    message = str(err.value)
    assert message == f"1 bad line(s) in {path}: {problem} (pass strict=False to load the rest)"
    assert "\n" not in message


def test_strict_message_shows_three_problems_and_lenient_mode_keeps_good_lines(tmp_path):
    path = write(tmp_path, [record("a"), "nope", "[]", record("b"), "{", record("a"), record("c")])
    with pytest.raises(EvalDataError) as err:
        load(path)
    problems = err.value.problems
    assert [p.split(": ")[0] for p in problems] == [f"{path}:2", f"{path}:3", f"{path}:5", f"{path}:6"]
    message = str(err.value)
    assert message.startswith(f"4 bad line(s) in {path}: {problems[0]}; {problems[1]}; {problems[2]}; ...")
    assert message.endswith("(pass strict=False to load the rest)") and problems[3] not in message
    data = load(path, strict=False)
    assert [s.sample_id for s in data.samples] == ["a", "b", "c"]
    assert data.problems == problems
    assert data.problems[3] == f"{path}:6: sample_id 'a' repeats line 1: give each record its own id"


def test_lenient_mode_with_nothing_left_raises(tmp_path):
    path = write(tmp_path, ["nope", record("u", task="Foo")])
    with pytest.raises(EvalDataError, match=r"2 bad line\(s\) in .*no good line is left") as err:
        load(path, strict=False)
    assert len(err.value.problems) == 2


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_file_without_records(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalDataError) as err:
        load(path)
    assert str(err.value) == (f"evaluation data {path} has no records: give a JSON-lines file with one "
                              f"PromptCBLUE record per line")
    assert err.value.problems == []


def test_missing_file_and_directory(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(EvalDataError) as err:
        load(missing)
    assert str(err.value) == (f"evaluation data {missing} does not exist: pass the path of a "
                              f"PromptCBLUE-format JSON-lines file")
    with pytest.raises(EvalDataError, match=f"evaluation data {tmp_path} is a directory"):
        load(tmp_path)


def test_unknown_task_with_task_map(tmp_path):
    path = write(tmp_path, [record("u1", task="MyHospital-STS"), record("u2", task="MyHospital-QA", choices=None)])
    with pytest.raises(EvalDataError, match='task_map=\\{"MyHospital-STS": '):
        load(path)
    data = load(path, task_map={"MyHospital-STS": "CHIP-STS", "MyHospital-QA": "free_text"})
    assert data.problems == [] and data.tasks() == ["MyHospital-STS", "MyHospital-QA"]
    assert data.spec("MyHospital-STS").default_label == "是的"
    assert data.spec("MyHospital-QA").family == "free_text"
    with pytest.raises(EvalDataError, match=r"task_map\['MyHospital-STS'\] = 'STS' is neither a known task "
                                            r"nor a family: use one of CMeEE-V2, .*free_text"):
        load(path, task_map={"MyHospital-STS": "STS"})


def test_text2dt_fails_at_load_with_the_not_implemented_reason(tmp_path):
    path = write(tmp_path, [record("t", task="Text2DT", choices=None)])
    with pytest.raises(EvalDataError, match="Text2DT' is not supported: the decision-tree metric "
                                            r"\(tree_lenv_radio\) is not implemented"):
        load(path)
