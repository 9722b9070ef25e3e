"""Synthetic Chinese clinical corpus, generated from the bundled knowledge table.

``medwb/knowledge/*.yaml`` holds one file per department; each disease lists its typical
chief complaints, history, signs, test results, treatment course, discharge orders and
the diseases it must be told apart from. A *case* is one random draw from those options;
each case yields one record per workflow:

- diagnosis: chief complaint + case features -> 初步诊断, 诊断依据, 鉴别诊断 (3 items)
- discharge: admission record + course notes + orders -> 出院记录 with five sections

Records use the PromptCBLUE layout (input, target, answer_choices, task_type,
task_dataset, sample_id) plus the structured ``case``. Everything is deterministic for a
given seed. No real patient data is involved anywhere.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from functools import lru_cache
from pathlib import Path

import yaml

from medwb import prompts
from medwb.errors import MedwbError
from medwb.paths import DATA_DIR, PACKAGE_DIR

KNOWLEDGE_DIR = PACKAGE_DIR / "knowledge"
HELDOUT_DIR = DATA_DIR / "heldout"
TASK_DATASET = "medwb-synthetic-v1"
TASKS = ("diagnosis", "discharge")

# How many options of each field a case draws: (min, max).
DRAW = {"present_history": (2, 3), "signs": (2, 3), "tests": (2, 3), "treatment": (3, 4),
        "progress": (1, 2), "discharge_orders": (3, 4)}
REQUIRED_LISTS = ("chief_complaints", "durations", "present_history", "past_history", "signs",
                  "tests", "treatment", "progress", "discharge_condition", "discharge_orders")


@dataclasses.dataclass(frozen=True)
class Disease:
    name: str
    department: str
    sex: str
    age: tuple[int, int]
    chief_complaints: tuple[str, ...]
    durations: tuple[str, ...]
    present_history: tuple[str, ...]
    past_history: tuple[str, ...]
    signs: tuple[str, ...]
    tests: tuple[str, ...]
    treatment: tuple[str, ...]
    progress: tuple[str, ...]
    discharge_condition: tuple[str, ...]
    discharge_orders: tuple[str, ...]
    differentials: tuple[tuple[str, str], ...]  # (name, distinguishing basis)


@dataclasses.dataclass(frozen=True)
class Case:
    """One synthetic patient. Field names are the prompt templates' placeholders."""
    case_id: str
    disease: str
    department: str
    sex: str
    age: int
    chief_complaint: str
    present_history: str
    past_history: str
    signs: tuple[str, ...]
    tests: tuple[str, ...]
    treatment: tuple[str, ...]
    progress: tuple[str, ...]
    discharge_condition: str
    discharge_orders: tuple[str, ...]
    differentials: tuple[tuple[str, str], ...]

    @property
    def physical_exam(self) -> str:
        return "".join(self.signs)

    @property
    def auxiliary_exams(self) -> str:
        return "".join(self.tests)

    @property
    def course_notes(self) -> str:
        # Dated ward-round notes; the discharge summary rewrites them as prose.
        days = [1] + [2 + 2 * i for i in range(len(self.treatment) - 1)]
        notes = [f"第{d}日，{t}" for d, t in zip(days, self.treatment)]
        notes += [f"第{days[-1] + 2 + i}日，{p}" for i, p in enumerate(self.progress)]
        return "".join(notes)

    @property
    def orders_brief(self) -> str:
        return "".join(self.discharge_orders)

    def fields(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(physical_exam=self.physical_exam, auxiliary_exams=self.auxiliary_exams,
                 course_notes=self.course_notes, orders_brief=self.orders_brief)
        return d

    def signature(self) -> str:
        """Hash of what the diagnosis task sees: two cases with equal signatures are
        the same case for the purpose of keeping train and held-out disjoint."""
        key = [self.disease, self.sex, self.age, self.chief_complaint, self.present_history,
               self.past_history, self.signs, self.tests]
        return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode()).hexdigest()


# --- knowledge table ----------------------------------------------------------------
def knowledge_files(knowledge_dir: Path = KNOWLEDGE_DIR) -> list[Path]:
    return sorted(Path(knowledge_dir).glob("*.yaml"))


@lru_cache(maxsize=4)
def load_knowledge(knowledge_dir: Path = KNOWLEDGE_DIR) -> tuple[Disease, ...]:
    """Read and validate every department file; errors name the file and disease."""
    diseases: list[Disease] = []
    files = knowledge_files(knowledge_dir)
    if not files:
        raise MedwbError(f"no knowledge table: {knowledge_dir} has no *.yaml files")
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise MedwbError(f"knowledge file {path} is not valid YAML: {e}") from None
        department = doc.get("department")
        for entry in doc.get("diseases") or []:
            name = entry.get("name", "?")
            where = f"knowledge file {path.name}, disease {name!r}"
            for key in REQUIRED_LISTS:
                if not entry.get(key):
                    raise MedwbError(f"{where}: field '{key}' is missing or empty")
            for cc in entry["chief_complaints"]:
                if cc.count("{d}") != 1:
                    raise MedwbError(f"{where}: chief complaint {cc!r} must contain {{d}} once")
            diffs = entry.get("differentials") or []
            if len(diffs) < 3 or any(x.get("name") == name for x in diffs):
                raise MedwbError(f"{where}: needs 3 differentials other than itself")
            diseases.append(Disease(
                name=name, department=entry.get("department", department),
                sex=entry.get("sex", "任意"), age=tuple(entry.get("age", (18, 80))),
                **{k: tuple(entry[k]) for k in REQUIRED_LISTS},
                differentials=tuple((x["name"], x["basis"]) for x in diffs[:3])))
    names = [d.name for d in diseases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise MedwbError(f"knowledge table: duplicate disease names {sorted(dupes)}")
    return tuple(diseases)


def diagnosis_vocabulary(diseases=None) -> list[str]:
    """Every diagnosis name the table knows (its diseases and their differentials)."""
    diseases = diseases or load_knowledge()
    names = {d.name for d in diseases} | {n for d in diseases for n, _ in d.differentials}
    return sorted(names)


def knowledge_digest(knowledge_dir: Path = KNOWLEDGE_DIR) -> str:
    h = hashlib.sha256()
    for path in knowledge_files(knowledge_dir):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


# --- cases and records ---------------------------------------------------------------
def _draw(rng: random.Random, options: tuple[str, ...], field: str) -> tuple[str, ...]:
    lo, hi = DRAW[field]
    k = min(len(options), rng.randint(lo, hi))
    picked = sorted(rng.sample(range(len(options)), k))  # keep the table's natural order
    return tuple(options[i] for i in picked)


def sample_case(disease: Disease, rng: random.Random, case_id: str) -> Case:
    sex = disease.sex if disease.sex in ("男", "女") else rng.choice(("男", "女"))
    cc = rng.choice(disease.chief_complaints).replace("{d}", rng.choice(disease.durations))
    return Case(
        case_id=case_id, disease=disease.name, department=disease.department, sex=sex,
        age=rng.randint(*disease.age), chief_complaint=cc,
        present_history="".join(_draw(rng, disease.present_history, "present_history")),
        past_history=rng.choice(disease.past_history),
        signs=_draw(rng, disease.signs, "signs"), tests=_draw(rng, disease.tests, "tests"),
        treatment=_draw(rng, disease.treatment, "treatment"),
        progress=_draw(rng, disease.progress, "progress"),
        discharge_condition=rng.choice(disease.discharge_condition),
        discharge_orders=_draw(rng, disease.discharge_orders, "discharge_orders"),
        differentials=disease.differentials)


def diagnosis_target(case: Case) -> str:
    basis = f"{case.chief_complaint}；{case.signs[0]}{case.tests[0]}"
    lines = [f"{prompts.PRIMARY_HEADING}：{case.disease}",
             f"{prompts.BASIS_HEADING}：{basis}",
             f"{prompts.DIFFERENTIAL_HEADING}："]
    lines += [f"{i}. {name}：{why}" for i, (name, why) in enumerate(case.differentials, 1)]
    return "\n".join(lines)


def discharge_target(case: Case) -> str:
    s = prompts.DISCHARGE_SECTIONS
    admission = (f"患者，{case.sex}，{case.age}岁，因“{case.chief_complaint}”入院。"
                 f"查体：{case.physical_exam}辅助检查：{case.auxiliary_exams}")
    course = "入院后" + "".join(case.treatment) + "".join(case.progress)
    orders = "\n".join(f"{i}. {o}" for i, o in enumerate(case.discharge_orders, 1))
    return "\n".join([f"{s[0]}：{case.disease}", f"{s[1]}：{admission}", f"{s[2]}：{course}",
                      f"{s[3]}：{case.discharge_condition}", f"{s[4]}：\n{orders}"])


def task_prompt(case: Case, task: str) -> str:
    template = {"diagnosis": prompts.DIAGNOSIS_PROMPT, "discharge": prompts.DISCHARGE_PROMPT}
    if task not in template:
        raise MedwbError(f"task {task!r} is unknown: use one of {', '.join(TASKS)}")
    return template[task].format(**case.fields())


def to_record(case: Case, task: str) -> dict:
    target = diagnosis_target(case) if task == "diagnosis" else discharge_target(case)
    prefix = "dx" if task == "diagnosis" else "dc"
    fields = case.fields()
    return {"sample_id": f"{prefix}-{case.case_id}", "task_type": task,
            "task_dataset": TASK_DATASET, "input": task_prompt(case, task), "target": target,
            "answer_choices": [], "case": fields}


def generate_cases(n_per_disease: int, seed: str, exclude: set[str] = frozenset(),
                   id_prefix: str = "", diseases=None) -> list[Case]:
    """``n_per_disease`` distinct cases per disease whose signatures avoid ``exclude``."""
    diseases = diseases or load_knowledge()
    rng = random.Random(seed)
    cases, seen = [], set(exclude)
    for d_index, disease in enumerate(diseases):
        made, tries = 0, 0
        while made < n_per_disease:
            tries += 1
            if tries > 50 * n_per_disease + 100:
                raise MedwbError(f"knowledge table: disease {disease.name!r} has too few options "
                                 f"for {n_per_disease} distinct cases")
            case = sample_case(disease, rng, f"{id_prefix}{d_index:02d}{made:04d}")
            sig = case.signature()
            if sig in seen:
                continue
            seen.add(sig)
            cases.append(case)
            made += 1
    return cases


def heldout_cases(n_per_disease: int = 2, seed: str = "medwb-heldout-v1") -> list[Case]:
    return generate_cases(n_per_disease, seed, id_prefix="h")


def train_cases(n_per_disease: int, seed: str, heldout: list[Case]) -> list[Case]:
    return generate_cases(n_per_disease, seed, exclude={c.signature() for c in heldout},
                          id_prefix="t")


# --- the shipped evaluation set --------------------------------------------------------
def heldout_records_text(cases: list[Case]) -> dict[str, str]:
    """JSON-lines text per task, exactly as shipped in data/heldout/."""
    out = {}
    for task in TASKS:
        lines = [json.dumps(to_record(c, task), ensure_ascii=False, sort_keys=True) for c in cases]
        out[task] = "\n".join(lines) + "\n"
    return out


def write_heldout(out_dir: Path = HELDOUT_DIR) -> list[Path]:
    from medwb.paths import write_text_atomic
    written = []
    for task, text in heldout_records_text(heldout_cases()).items():
        path = Path(out_dir) / f"{task}.jsonl"
        write_text_atomic(path, text)
        written.append(path)
    return written


def load_records(task: str, data_dir: Path = HELDOUT_DIR, limit: int | None = None) -> list[dict]:
    """The bundled held-out records of one workflow."""
    if task not in TASKS:
        raise MedwbError(f"task {task!r} is unknown: use one of {', '.join(TASKS)}")
    path = Path(data_dir) / f"{task}.jsonl"
    if not path.exists():
        raise MedwbError(f"held-out set {path} is missing: run `medwb data` to regenerate it")
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[:limit] if limit else records
