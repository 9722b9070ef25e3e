"""Notebooks: committed clean, parameterized, and executed headless by papermill."""
import json
from pathlib import Path

import papermill as pm
import pytest

from medwb import runner
from medwb.envs import KERNELS

pytestmark = pytest.mark.slow  # loads or converts models, runs notebooks or servers

NOTEBOOKS = runner.discover()


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean_and_parameterized(nb):
    doc = json.loads(nb.read_text(encoding="utf-8"))
    code = [c for c in doc["cells"] if c["cell_type"] == "code"]
    assert "parameters" in code[0]["metadata"].get("tags", []), "first code cell must be tagged"
    # papermill must parse every parameter line; run_dir is how the main job passes the run folder
    declared = pm.inspect_notebook(str(nb))
    assert "run_dir" in declared
    # Every assignment in the parameters cell must parse (a comment papermill cannot read
    # silently drops that parameter, and `medwb run -p NAME=...` then refuses it).
    first = "".join(code[0]["source"]) if isinstance(code[0]["source"], list) else code[0]["source"]
    assigned = [line.split("=", 1)[0].strip() for line in first.splitlines()
                if "=" in line and not line.lstrip().startswith("#")]
    assert assigned == list(declared), f"parameters papermill could not parse: {set(assigned) - set(declared)}"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        "commit notebooks without outputs"
    assert doc["metadata"]["kernelspec"]["name"] in KERNELS.values()
    ids = [c.get("id") for c in doc["cells"]]  # nbformat 4.5: every cell has its own id
    assert None not in ids and len(set(ids)) == len(ids), f"cells without an id or sharing one: {ids}"
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in code]
    # Short calls into medwb; the parameters cell holds only assignments (checked above), as
    # many as the notebook takes.
    assert all(len(src.splitlines()) <= 15 for src in sources[1:]), "logic belongs in medwb"


def test_environment_check_runs_headless(tmp_path, demo_model_dir):
    nb = Path(runner.NOTEBOOKS_DIR) / "00_environment_check.ipynb"
    pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"run_dir": str(tmp_path)},
                        kernel_name="medwb-main", cwd=str(tmp_path), progress_bar=False)
    env = json.loads((tmp_path / "environment.json").read_text(encoding="utf-8"))
    assert env["main"]["cpu"]["logical_cores"] >= 1
    assert {f["feature"] for f in env["main"]["isa_features"]} >= {"AVX2", "AVX-512", "AVX512_VNNI",
                                                                     "AVX512_BF16", "AMX"}
    assert env["main"]["versions"]["transformers"].startswith("5.")
    assert env["bigdl"]["versions"]["transformers"] == "4.31.0"
    assert env["bigdl"]["versions"]["bigdl-llm"] == "2.4.0"
    assert env["main"]["offline"]["HF_HUB_OFFLINE"] == "1"
    executed = json.loads((tmp_path / nb.name).read_text(encoding="utf-8"))
    outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert "demo model quality" in json.dumps(outputs, ensure_ascii=False)
