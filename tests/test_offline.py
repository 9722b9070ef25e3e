"""Offline by construction: switches set on import, no connection attempted, local paths only."""
import json
import os
import subprocess
import sys

import pytest

from medwb.errors import MedwbError
from medwb.offline import OFFLINE_ENV
from medwb.paths import check_model_dir

from conftest import run_python


def test_import_forces_offline_switches():
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    env["HF_HUB_OFFLINE"] = "0"  # even an explicit "online" is overridden
    out = subprocess.run([sys.executable, "-c",
                          "import os, json, medwb; print(json.dumps({k: os.environ.get(k) for k in "
                          f"{list(OFFLINE_ENV)!r}}}))"], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == OFFLINE_ENV


def test_openvino_telemetry_is_declined(tmp_path):
    """openvino-telemetry treats a missing consent file as consent when its dialog is off;
    after importing medwb its own checker must read 'declined'."""
    code = ("import medwb\n"
            "from openvino_telemetry.utils.opt_in_checker import OptInChecker, ConsentCheckResult\n"
            "r = OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=False)\n"
            "print(r.name)")
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("CI", None)  # the checker short-cuts on CI=true; test the real decision
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "DECLINED"
    assert (tmp_path / "intel" / "openvino_telemetry").read_text() == "0"


def test_demo_model_use_opens_no_connection(demo_model_dir):
    """Load and generate with every socket connect trapped: none may be attempted."""
    code = f"""
import json, socket
attempts = []
def trap(self, address, *a, **k):
    attempts.append(str(address)); raise OSError("network disabled by test")
socket.socket.connect = trap
socket.socket.connect_ex = trap
import medwb
from medwb.backends.pytorch import PyTorchBackend
from medwb.tasks import prompts
b = PyTorchBackend.load({str(demo_model_dir)!r})
out = b.generate([prompts.render_chat([{{"role": "user", "content": "任务：鉴别诊断\\n主诉：发热3天"}}])], 8)
from medwb.child import write_result
write_result({{"attempts": attempts, "out": out}})
"""
    result = run_python("main", code)
    assert result["attempts"] == []
    assert result["out"][0]


@pytest.mark.parametrize("make_path, expected", [
    (lambda tmp: tmp / "no-such-model", "does not exist"),
    (lambda tmp: (tmp / "file.bin").write_bytes(b"x") and tmp / "file.bin", "is not a directory"),
    (lambda tmp: tmp, "is not a model directory"),
    (lambda tmp: "THUDM/chatglm-6b", "does not exist"),  # a hub id is never downloaded
])
def test_bad_model_path_is_one_line_error_naming_it(tmp_path, make_path, expected):
    path = make_path(tmp_path)
    with pytest.raises(MedwbError) as err:
        check_model_dir(path)
    message = str(err.value)
    assert expected in message and str(path) in message and "\n" not in message
    assert message.startswith("model_path")


def test_backend_rejects_hub_id_without_download():
    from medwb.backends.pytorch import PyTorchBackend
    with pytest.raises(MedwbError, match="'THUDM/chatglm-6b' does not exist"):
        PyTorchBackend.load("THUDM/chatglm-6b")
