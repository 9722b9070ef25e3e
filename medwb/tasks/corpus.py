"""Synthetic Chinese clinical corpus, generated from the bundled knowledge table.

``medwb/knowledge/*.yaml`` holds one file per department; each disease lists its typical
chief complaints, history, signs, test results, treatment course, discharge orders and
the diseases it must be told apart from. A *case* is one random draw from those options;
each case yields one record per workflow:

- diagnosis: chief complaint + case features -> 初步诊断, 诊断依据, 鉴别诊断 (3 items)
- discharge: admission record + course notes + orders -> 出院记录 with five sections

Real records are less tidy than the table, so part of the cases are rendered in a *varied
style* (``STYLES``): English abbreviations mixed in (BP, WBC, CRP, HTN...), one free-text
病历特点 paragraph instead of the four fields, and long multi-day histories and course notes.
The targets copy the findings as the case writes them, so an answer can be checked against
its source (``medwb.quality.grounding``). A second held-out set is all varied-style cases.

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

from medwb.tasks import prompts
from medwb.errors import MedwbError
from medwb.paths import DATA_DIR

KNOWLEDGE_DIR = Path(__file__).resolve().parent / "knowledge"
HELDOUT_DIR = DATA_DIR / "heldout"
TASK_DATASET = "medwb-synthetic-v1"
TASKS = ("diagnosis", "discharge")
# The held-out sets shipped in data/heldout/: name -> (cases per disease, seed, varied style).
HELDOUT_SETS = {"standard": (2, "medwb-heldout-v1", False),
                "varied": (2, "medwb-heldout-varied-v1", True)}

# Varied style. Each part is drawn independently for a varied case (at least one).
STYLES = ("abbrev", "free_text", "long")
# Abbreviations as they appear in Chinese records; a lookahead keeps "呼吸困难" etc. intact.
ABBREVIATIONS = (
    (r"血压(?=\d)", "BP "), (r"心率(?=\d)", "HR "), (r"脉搏(?=\d)", "P "), (r"体温(?=\d)", "T "),
    (r"白细胞(?=\d|计数)", "WBC"), (r"血红蛋白(?=\d)", "Hb "), (r"血小板(?=\d)", "PLT "),
    (r"C反应蛋白", "CRP"), (r"降钙素原", "PCT"), (r"心电图", "ECG"), (r"谷丙转氨酶", "ALT"),
    (r"谷草转氨酶", "AST"), (r"肌酐", "Cr"), (r"糖化血红蛋白", "HbA1c"), (r"空腹血糖", "FPG"),
    (r"高血压", "HTN"), (r"糖尿病", "DM"), (r"冠心病", "CHD"), (r"阳性", "(+)"), (r"阴性", "(-)"),
    (r"静脉滴注", " ivgtt"), (r"每日三次", " tid"), (r"每日两次", " bid"), (r"每日一次", " qd"),
    (r"既往体健", "PMH: 体健"), (r"否认", "denies "), (r"无发热", "no fever"),
)
# Sentences without findings, for long histories and ward-round notes.
HISTORY_FILLERS = ("曾于当地诊所就诊，予对症处理，效果不佳。", "病程中精神、睡眠欠佳，食欲下降，大小便如常。",
                   "近期体重无明显变化。", "自行口服药物（具体不详），症状无明显缓解。",
                   "家属诉患者近来活动耐量下降。", "症状反复，时轻时重。")
WARD_FILLERS = ("查房：病情平稳，继续目前治疗。", "患者诉症状较前减轻，饮食睡眠可。",
                "上级医师查房，同意目前诊疗方案。", "查房：生命体征平稳，无新发不适。",
                "复查相关指标，继续观察。")

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
    aliases: tuple[str, ...] = ()  # colloquial names (宫外孕, AMI) for the normalization task


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
    style: tuple[str, ...] = ()  # varied-style parts applied (empty: the standard template)
    sig: str = ""  # signature of the underlying draw, before any style

    @property
    def physical_exam(self) -> str:
        return "".join(self.signs)

    @property
    def auxiliary_exams(self) -> str:
        return "".join(self.tests)

    @property
    def course_notes(self) -> str:
        # Dated ward-round notes; the discharge summary rewrites them as prose. A long
        # (multi-day) record has a routine note on most days in between.
        long = "long" in self.style
        first = int(self.sig[:8] or "0", 16)  # which routine note comes first: per case
        notes = []
        for i, item in enumerate(self.treatment + self.progress):
            day = 1 + i * (4 if long else 2)
            notes.append(f"第{day}日，{item}")
            if long:  # a routine note on each of the three days until the next event
                notes += [f"第{day + k}日，{WARD_FILLERS[(first + 3 * i + k - 1) % len(WARD_FILLERS)]}"
                          for k in (1, 2, 3)]
        return "".join(notes)

    @property
    def case_summary(self) -> str:
        """The free-text 病历特点 paragraph (varied style)."""
        return (f"患者{self.sex}，{self.age}岁。{self.present_history}{self.past_history}"
                f"查体：{self.physical_exam}辅助检查：{self.auxiliary_exams}")

    @property
    def orders_brief(self) -> str:
        return "".join(self.discharge_orders)

    def fields(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(physical_exam=self.physical_exam, auxiliary_exams=self.auxiliary_exams,
                 course_notes=self.course_notes, orders_brief=self.orders_brief,
                 case_summary=self.case_summary)
        return d

    def signature(self) -> str:
        """Hash of what the diagnosis task sees, before any style: two cases with equal
        signatures are the same case for keeping train and held-out disjoint (a varied
        rendering of a held-out case must not be trained on either)."""
        return self.sig or _signature([self.disease, self.sex, self.age, self.chief_complaint,
                                       self.present_history, self.past_history, self.signs, self.tests])


def _signature(key: list) -> str:
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
                differentials=tuple((x["name"], x["basis"]) for x in diffs[:3]),
                aliases=tuple(entry.get("aliases") or ())))
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


# --- cases and records ---------------------------------------------------------------
def _draw(rng: random.Random, options: tuple[str, ...], field: str) -> tuple[str, ...]:
    lo, hi = DRAW[field]
    k = min(len(options), rng.randint(lo, hi))
    picked = sorted(rng.sample(range(len(options)), k))  # keep the table's natural order
    return tuple(options[i] for i in picked)


def sample_case(disease: Disease, rng: random.Random, case_id: str) -> Case:
    sex = disease.sex if disease.sex in ("男", "女") else rng.choice(("男", "女"))
    cc = rng.choice(disease.chief_complaints).replace("{d}", rng.choice(disease.durations))
    case = Case(
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
    return dataclasses.replace(case, sig=case.signature())


def abbreviate(text: str, rng: random.Random, p: float = 0.8) -> str:
    """``text`` with most of ``ABBREVIATIONS`` applied (each kept or not at random)."""
    import re
    for pattern, short in ABBREVIATIONS:
        if rng.random() < p:
            text = re.sub(pattern, short, text)
    return text


def stylize(case: Case, parts: tuple[str, ...], rng: random.Random) -> Case:
    """The same case written in the varied style ``parts`` (a subset of ``STYLES``)."""
    if not parts:
        return case
    history = case.present_history
    if "long" in parts:
        # A multi-day history: dated episodes with routine sentences between them.
        sentences = [x + "。" for x in history.split("。") if x]
        days = sorted(rng.sample(range(2, 15), len(sentences)), reverse=True)
        history = "".join(f"入院前{d}天，{x}{rng.choice(HISTORY_FILLERS)}" for d, x in zip(days, sentences))
    changed = dict(present_history=history)
    if "abbrev" in parts:
        ab = lambda t: abbreviate(t, rng)  # noqa: E731
        changed = dict(present_history=ab(history), past_history=ab(case.past_history),
                       signs=tuple(map(ab, case.signs)), tests=tuple(map(ab, case.tests)),
                       treatment=tuple(map(ab, case.treatment)), progress=tuple(map(ab, case.progress)),
                       discharge_condition=ab(case.discharge_condition))
    return dataclasses.replace(case, style=tuple(p for p in STYLES if p in parts), **changed)


def draw_style(rng: random.Random, p_varied: float) -> tuple[str, ...]:
    """No style (standard template) with probability 1 - ``p_varied``; else a non-empty
    random subset of ``STYLES``."""
    if rng.random() >= p_varied:
        return ()
    while True:
        parts = tuple(p for p in STYLES if rng.random() < 0.5)
        if parts:
            return parts


def diagnosis_target(case: Case) -> str:
    # The basis copies the case's own words (abbreviations included): grounded by design.
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
    free = "free_text" in case.style
    template = {"diagnosis": prompts.DIAGNOSIS_PROMPT_FREE_TEXT if free else prompts.DIAGNOSIS_PROMPT,
                "discharge": prompts.DISCHARGE_PROMPT_FREE_TEXT if free else prompts.DISCHARGE_PROMPT}
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
                   id_prefix: str = "", diseases=None, p_varied: float = 0.0) -> list[Case]:
    """``n_per_disease`` distinct cases per disease whose signatures avoid ``exclude``; a
    share ``p_varied`` of them in the varied style (drawn from a separate stream, so the
    underlying cases do not depend on it)."""
    diseases = diseases or load_knowledge()
    rng = random.Random(seed)
    style_rng = random.Random(seed + "/style")
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
            cases.append(stylize(case, draw_style(style_rng, p_varied), style_rng) if p_varied else case)
            made += 1
    return cases


def heldout_cases(name: str = "standard") -> list[Case]:
    """One shipped held-out set (``HELDOUT_SETS``); the varied set avoids the standard one."""
    if name not in HELDOUT_SETS:
        raise MedwbError(f"held-out set {name!r} is unknown: use one of {', '.join(HELDOUT_SETS)}")
    return list(_heldout_cases(name))


@lru_cache(maxsize=4)
def _heldout_cases(name: str) -> tuple[Case, ...]:
    # Generated once per process, as the knowledge table is read once (load_knowledge): a
    # build, the data hash and the evaluation all ask for the same sets.
    n, seed, varied = HELDOUT_SETS[name]
    exclude = set() if name == "standard" else {c.signature() for c in heldout_cases("standard")}
    prefix = "h" if name == "standard" else "v"
    return tuple(generate_cases(n, seed, exclude=exclude, id_prefix=prefix, p_varied=1.0 if varied else 0.0))


def all_heldout_cases() -> list[Case]:
    return [c for name in HELDOUT_SETS for c in heldout_cases(name)]


def train_cases(n_per_disease: int, seed: str, heldout: list[Case], p_varied: float = 0.0) -> list[Case]:
    return generate_cases(n_per_disease, seed, exclude={c.signature() for c in heldout},
                          id_prefix="t", p_varied=p_varied)


# --- the shipped evaluation set --------------------------------------------------------
def heldout_records_text(cases: list[Case]) -> dict[str, str]:
    """JSON-lines text per task, exactly as shipped in data/heldout/."""
    out = {}
    for task in TASKS:
        lines = [json.dumps(to_record(c, task), ensure_ascii=False, sort_keys=True) for c in cases]
        out[task] = "\n".join(lines) + "\n"
    return out


def heldout_file(task: str, name: str = "standard") -> str:
    return f"{task}.jsonl" if name == "standard" else f"{task}_{name}.jsonl"


def write_heldout(out_dir: Path = HELDOUT_DIR) -> list[Path]:
    from medwb.paths import write_text_atomic
    written = []
    for name in HELDOUT_SETS:
        for task, text in heldout_records_text(heldout_cases(name)).items():
            path = Path(out_dir) / heldout_file(task, name)
            write_text_atomic(path, text)
            written.append(path)
    return written


def load_records(task: str, data_dir: Path = HELDOUT_DIR, limit: int | None = None,
                 heldout_set: str = "standard") -> list[dict]:
    """The bundled held-out records of one workflow (``heldout_set``: standard or varied)."""
    if task not in TASKS:
        raise MedwbError(f"task {task!r} is unknown: use one of {', '.join(TASKS)}")
    if heldout_set not in HELDOUT_SETS:
        raise MedwbError(f"held-out set {heldout_set!r} is unknown: use one of {', '.join(HELDOUT_SETS)}")
    path = Path(data_dir) / heldout_file(task, heldout_set)
    if not path.exists():
        raise MedwbError(f"held-out set {path} is missing: run `medwb data` to regenerate it")
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[:limit] if limit else records


def heldout_prompts(n: int) -> list[str]:
    """Chat-formatted prompts of the first ``n`` held-out cases of each workflow, alternating."""
    per_task = [load_records(t, limit=n) for t in TASKS]
    mixed = [r for pair in zip(*per_task) for r in pair][:n]
    return [prompts.user_turn(r["input"]) for r in mixed]
