"""App mode: the clinical apps as web pages for several doctors at once (``medwb app``).

One process serves one app: it starts the model pool (``medwb.apps.pool``, one process
per configured model, shared by every page) and a Voila server that renders
``pages/app.ipynb`` (code hidden, the widgets only) for each visitor in its own kernel;
each page connects to the pool instead of starting models of its own.

Access: Voila listens on 127.0.0.1 unless told otherwise, and always asks for a token
(Jupyter server's own auth): on a shared server another local user must not reach the
doctors' page either. Another address needs ``--ip`` *and* a token the operator chose
(``MEDWB_APP_TOKEN`` or ``--token-file``), never one on the command line, where ``ps``
shows it. The token goes to Voila in a config file only this user can read.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


from medwb.apps import workers
from medwb.errors import MedwbError, check_count

PAGE_NOTEBOOK = Path(__file__).resolve().parent / "pages" / "app.ipynb"
# Our Voila template (pages/share/voila/templates/medwb: the "lab" one without its CDN links).
TEMPLATE_PATH = Path(__file__).resolve().parent / "pages" / "share"
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "app.yaml"
WORKFLOWS = {"diagnosis": "鉴别诊断 · differential diagnosis", "discharge": "出院记录 · discharge record"}
# The config file's keys and their defaults (models: the diagnosis app's three variants).
DEFAULTS = {"models": ["openvino-genai:int8/f32", "openvino-genai:int4/f32", "bigdl:sym_int4"],
            "threads": 0, "max_new_tokens": {"diagnosis": 200, "discharge": 400},
            "load_timeout_s": 900, "generate_timeout_s": 300, "feedback_db": "", "store_text": False}
# What a page reads from its environment (set by the server, inherited by Voila's kernels).
ENV_POOL, ENV_WORKFLOW, ENV_SETTINGS = "MEDWB_POOL", "MEDWB_APP_WORKFLOW", "MEDWB_APP_SETTINGS"
TOKEN_ENV = "MEDWB_APP_TOKEN"


# ====================================================================== configuration

def load_config(path) -> dict:
    """The pool's config file, checked: models, threads, budgets, timeouts, store."""
    from medwb.paths import read_settings_file
    path = Path(path)
    raw = read_settings_file(path, "--config", "give a YAML file like configs/app.yaml")
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise MedwbError(f"--config {path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}")
    cfg = {**DEFAULTS, **raw}
    cfg["max_new_tokens"] = {**DEFAULTS["max_new_tokens"], **(raw.get("max_new_tokens") or {})}
    if not isinstance(cfg["models"], list) or not cfg["models"]:
        raise MedwbError(f"--config {path}: models must be a non-empty list, e.g. [openvino-genai:int8/f32]")
    try:
        cfg["specs"] = [workers.parse_model(m, i, "models") for i, m in enumerate(cfg["models"])]
    except MedwbError as e:
        raise MedwbError(f"--config {path}: {e}") from None
    labels = [s["label"] for s in cfg["specs"]]
    if len(set(labels)) != len(labels):
        raise MedwbError(f"--config {path}: models lists a model twice ({labels})")
    check_count("threads", cfg["threads"], 0, "0: the cores shared out among the models")
    for wf, n in cfg["max_new_tokens"].items():
        check_count(f"max_new_tokens.{wf}", n, 1, "answer budget in tokens")
    for key in ("load_timeout_s", "generate_timeout_s"):
        if not isinstance(cfg[key], (int, float)) or isinstance(cfg[key], bool) or cfg[key] <= 0:
            raise MedwbError(f"--config {path}: {key} must be a positive number of seconds, got {cfg[key]!r}")
    if not isinstance(cfg["store_text"], bool):
        raise MedwbError(f"--config {path}: store_text must be true or false, got {cfg['store_text']!r}")
    return cfg


def check_pool_fits(specs: list[dict], log=print) -> list[Path]:
    """Prepare every model's files, then refuse a pool whose models do not fit in memory together."""
    from medwb.paths import dir_size_bytes
    from medwb.sysinfo import check_ram
    paths = []
    for spec in specs:
        log(f"preparing {spec['label']} ...")
        paths.append(workers.resolve_artifact(spec, log=lambda *_: None))
    need = sum(int(dir_size_bytes(p) * workers.WORKER_RAM_FACTOR + workers.WORKER_RAM_BASE) for p in paths)
    check_ram(need, f"the app's model pool ({len(specs)} models)",
              f"{workers.WORKER_RAM_FACTOR:g}x each model's files + {workers.WORKER_RAM_BASE / 2**30:.1f} GiB",
              "list fewer or smaller models (e.g. INT4) in the config")
    return paths


def resolve_token(ip: str, token_file: str | None) -> tuple[str, str]:
    """(token, where it came from). Loopback gets a fresh random one if none is given;
    any other address needs one chosen by the operator."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise MedwbError(f"--token-file {token_file}: cannot read it ({e.strerror})") from None
        if len(token) < 16:
            raise MedwbError(f"--token-file {token_file}: the token must have at least 16 characters")
        return token, "--token-file"
    if os.environ.get(TOKEN_ENV):
        token = os.environ[TOKEN_ENV].strip()
        if len(token) < 16:
            raise MedwbError(f"{TOKEN_ENV}: the token must have at least 16 characters")
        return token, TOKEN_ENV
    if not is_loopback(ip):
        raise MedwbError(f"--ip {ip}: serving beyond this machine needs a token you chose: set {TOKEN_ENV} "
                         "or give --token-file (at least 16 characters; share it with the doctors only)")
    return secrets.token_urlsafe(24), "generated"


def is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        raise MedwbError(f"--ip {ip!r}: not an IP address; use 127.0.0.1 (this machine only) or the "
                         "server's intranet address") from None


# ====================================================================== the page

def page(workflow: str = "") -> "object":
    """Build and show one page's app (called by pages/app.ipynb inside a Voila kernel)."""
    import ipywidgets as w
    from IPython.display import display

    workflow = workflow or os.environ.get(ENV_WORKFLOW, "diagnosis")
    pool = os.environ.get(ENV_POOL, "")
    settings = json.loads(os.environ.get(ENV_SETTINGS, "{}"))
    if workflow == "discharge":
        from medwb.apps.discharge.app import DischargeApp as App
    else:
        from medwb.apps.diagnosis.app import DiagnosisApp as App
    app = App(models=None, max_new_tokens=settings.get("max_new_tokens", {}).get(workflow, 200),
              feedback_db=settings.get("feedback_db", ""), store_text=settings.get("store_text", False),
              origin="ui", pool=pool)
    app.start()
    note = w.HTML("<small>模型在本院服务器上运行，病历不离开内网 · the models run on this hospital's server; "
                  "nothing leaves the intranet. 请核对标黄内容 · check highlighted findings.</small>")
    display(w.VBox([app.widget, note]))
    return app


# ====================================================================== the server

def connect_host(ip: str) -> str:
    """Where a client on this machine reaches a server listening on ``ip``."""
    return {"0.0.0.0": "127.0.0.1", "localhost": "127.0.0.1", "::": "::1"}.get(ip, ip)


def _wait_listening(ip: str, port: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    host = connect_host(ip)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MedwbError(f"the page server (Voila) exited with status {proc.returncode} before it listened; "
                             "see voila.log in the run folder")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.3)
    raise MedwbError(f"the page server did not listen on {ip}:{port} within {timeout_s:.0f} s; see voila.log")


def port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def page_notebook(workflow: str, folder: Path) -> Path:
    """The page notebook for ``workflow``, titled by it (the browser tab reads 鉴别诊断 or
    出院记录, so a doctor with both pages open tells them apart): a copy of pages/app.ipynb
    in the run folder with the title in its metadata, which Voila puts in <title>."""
    from medwb.paths import write_text_atomic
    nb = json.loads(PAGE_NOTEBOOK.read_text(encoding="utf-8"))
    nb.setdefault("metadata", {})["title"] = f"{WORKFLOWS[workflow]} · MedWB"
    path = Path(folder) / f"{workflow}.ipynb"
    write_text_atomic(path, json.dumps(nb, ensure_ascii=False))
    return path


class AppServer:
    """The pool plus Voila; ``start()`` returns once the page answers, ``stop()`` ends both."""

    def __init__(self, workflow: str, config: dict, run_dir: Path, ip: str = "127.0.0.1", port: int = 8866,
                 token: str = "", log=print):
        self.workflow, self.config, self.run_dir = workflow, config, Path(run_dir)
        self.ip, self.port, self.token, self.log = ip, port, token, log
        self.pool = None
        self.voila: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        host = connect_host(self.ip)
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/?token={self.token}"

    def start(self, timeout_s: float = 120) -> None:
        from medwb.apps.pool import ModelPool
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.pool = ModelPool.from_config(cfg, self.run_dir)
        sock = self.pool.socket_path
        self.pool.start()
        # The token reaches Voila in a config file only this user can read (not argv).
        conf = self.run_dir / "jupyter-config"
        conf.mkdir(exist_ok=True)
        (conf / "voila.json").touch(mode=0o600)
        os.chmod(conf / "voila.json", 0o600)
        (conf / "voila.json").write_text(json.dumps({"Voila": {"token": self.token}}), encoding="utf-8")
        db = cfg["feedback_db"] or str(self.run_dir / "feedback.sqlite")
        settings = {"max_new_tokens": cfg["max_new_tokens"], "feedback_db": db, "store_text": cfg["store_text"]}
        env = {**os.environ, ENV_POOL: str(sock), ENV_WORKFLOW: self.workflow, ENV_SETTINGS: json.dumps(settings),
               "JUPYTER_CONFIG_DIR": str(conf), "JUPYTER_PLATFORM_DIRS": "1",
               "JUPYTER_PATH": os.pathsep.join(filter(None, [str(TEMPLATE_PATH), os.environ.get("JUPYTER_PATH")]))}
        env.pop(TOKEN_ENV, None)  # kernels have no use for it
        cmd = [sys.executable, "-m", "voila", str(page_notebook(self.workflow, self.run_dir)), "--no-browser", f"--Voila.ip={self.ip}",
               f"--port={self.port}", "--Voila.port_retries=0", "--VoilaConfiguration.show_tracebacks=False",
               "--VoilaConfiguration.strip_sources=True", "--theme=light", "--template=medwb",
               # kernels over Unix sockets in the run folder, not TCP ports any local user could reach
               "--KernelManager.transport=ipc"]
        log_file = open(self.run_dir / "voila.log", "ab")
        self.voila = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                      cwd=str(self.run_dir), start_new_session=True)
        log_file.close()
        _wait_listening(self.ip, self.port, self.voila, timeout_s)

    def stop(self) -> None:
        if self.voila is not None and self.voila.poll() is None:
            os.killpg(self.voila.pid, signal.SIGTERM)
            try:
                self.voila.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.voila.pid, signal.SIGKILL)
                self.voila.wait()
        if self.pool is not None:
            self.pool.close()


def run(workflow: str, config_path, run_dir, ip: str, port: int, token_file: str | None,
        log=print) -> int:
    """``medwb app``: check everything (nothing is written before), serve until interrupted."""
    from medwb import runner
    from medwb.paths import check_writable_dir
    if workflow not in WORKFLOWS:
        raise MedwbError(f"app {workflow!r}: choose {' or '.join(WORKFLOWS)}")
    check_count("--port", port, 1, "a TCP port, e.g. 8866")
    if port > 65535:
        raise MedwbError(f"--port {port}: a TCP port is at most 65535")
    config = load_config(config_path)
    token, source = resolve_token(ip, token_file)
    if not port_free("0.0.0.0" if ip == "localhost" else ip, port):
        raise MedwbError(f"--port {port}: already in use on {ip}; choose another port")
    if run_dir:
        check_writable_dir(run_dir, "--run-dir")
    check_pool_fits(config["specs"], log=log)
    run_dir = Path(run_dir) if run_dir else runner.new_run_dir()
    server = AppServer(workflow, config, run_dir, ip, port, token, log=log)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        server.start()
        where = "this machine only" if is_loopback(ip) else f"every machine that can reach {ip}: keep it inside the intranet"
        shown = server.url if source == "generated" else server.url.replace(token, f"<the token from {source}>")
        log(f"{WORKFLOWS[workflow]} app: {shown}  ({where})")
        log(f"models: {', '.join(s['label'] for s in config['specs'])} (one process each, shared by every page); "
            f"feedback: {config['feedback_db'] or run_dir / 'feedback.sqlite'}; run folder: {run_dir}")
        log("stop with Ctrl+C")
        while not stop.wait(1.0):
            if server.voila.poll() is not None:
                raise MedwbError(f"the page server exited (status {server.voila.returncode}); see "
                                 f"{run_dir / 'voila.log'}")
    finally:
        server.stop()
    return 0
