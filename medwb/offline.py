"""Offline by construction: no hub downloads, no telemetry.

Patient data and models stay on the hospital intranet, so the workbench never opens a
network connection. The switches must be set before transformers, huggingface_hub,
optimum or openvino are imported (they read them at import time), which is why
``medwb/__init__.py`` calls :func:`apply` first.
"""
import os

# Each variable is read by the library named beside it.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: never contact the hub
    "TRANSFORMERS_OFFLINE": "1",  # transformers (older releases, e.g. 4.31 in the bigdl env)
    "HF_DATASETS_OFFLINE": "1",  # datasets, if anything imports it
    "HF_HUB_DISABLE_TELEMETRY": "1",  # huggingface_hub usage pings
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    "DO_NOT_TRACK": "1",  # generic opt-out honoured by several tools
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray (the cluster extra): no usage stats to Anyscale
}


def apply() -> None:
    """Force the offline/telemetry switches on for this process and its children."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    disable_openvino_telemetry()


def disable_openvino_telemetry() -> None:
    """Opt out of OpenVINO telemetry without importing openvino.

    openvino-telemetry (used by openvino, optimum-intel and nncf) sends data only when
    it finds consent; its consent file is ~/intel/openvino_telemetry. Callers that turn
    the opt-in dialog off treat a *missing* file as consent, so writing "0" (declined)
    there is the only reliable opt-out (openvino_telemetry/utils/opt_in_checker.py).
    """
    try:
        consent_dir = os.path.join(os.path.expanduser("~"), "intel")
        consent_file = os.path.join(consent_dir, "openvino_telemetry")
        if os.path.exists(consent_file):
            with open(consent_file, encoding="utf-8") as f:
                if f.read().strip() == "0":
                    return
        os.makedirs(consent_dir, exist_ok=True)
        tmp = consent_file + f".tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("0")
        os.replace(tmp, consent_file)
    except OSError:
        # A read-only home must not stop the workbench; the env switches still apply.
        pass


def status() -> dict:
    """What is switched off, for the environment-check notebook and the tests."""
    return {key: os.environ.get(key) for key in OFFLINE_ENV}
