"""Long-lived model workers: one process per model, started once and reused across rounds.

Each model of a clinical app runs in its own process (``python -m medwb.apps.workers``, in
the bigdl environment for bigdl models), so three models generate truly in parallel, a
crash or hang ends one model and not the app, and the bigdl and OpenVINO stacks (which need
different transformers versions) never share an interpreter.

Protocol, JSON lines: the parent writes the model spec, then requests
``{"job", "kind", "fields", "template", "max_new_tokens"}`` or ``{"cancel": job}`` (``kind``:
the workflow whose rules fit the record into the context, ``medwb.apps.fitting.FITTERS``); the worker
answers ``ready`` (or ``error``) once loaded, then per job ``start`` (prompt tokens,
truncation warning), ``text`` chunks as they are decoded, and ``done`` (status ok /
cancelled / error, the full text, first-token and total time).
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from medwb.errors import MedwbError
from medwb.paths import model_identity
from medwb.sysinfo import default_threads

# This process's workers prepare their model and reserve its memory one at a time (the
# memory check below needs the pair together); other processes asking for the same artifact
# are kept apart by variants.prepare's own file lock.
_PREPARE_LOCK = threading.Lock()
# RAM promised to workers of this process that are still loading (worker -> bytes, under
# _PREPARE_LOCK): three models starting at once are checked against the memory together,
# not each against the same free figure. A loaded worker's memory is in use, so its
# promise is dropped.
_LOADING: dict[int, int] = {}
# A worker holds its model files about twice (mapped weights plus the runtime's own
# copies and caches) plus the libraries: 1.2-2.0x the files and 0.5-0.7 GiB measured on
# TinyLlama's shape at 256-token prompts (docs/reliability-and-privacy.md, "Faults").
WORKER_RAM_FACTOR, WORKER_RAM_BASE = 2.0, 512 * 2**20


# ====================================================================== parent side

def parse_model(item, index: int, parameter: str = "models") -> dict:
    """``backend:[weights/]precision[@path]`` (or a dict with those keys) -> a model spec.

    Without a path the model is the demo model; a path is a checkpoint folder, or an
    already-built artifact (an OpenVINO IR folder, a bigdl ``save_low_bit`` folder).
    """
    from medwb.backends import registry, variants
    where = f"{parameter}[{index}]"
    if isinstance(item, str):
        text, _, path = item.partition("@")
        parsed = variants.parse_variants(text)
        if len(parsed) != 1:
            raise MedwbError(f"{where} {item!r}: write one model as backend:[weights/]precision[@path], "
                             "e.g. openvino-genai:int4/f32 or bigdl:sym_int4@/models/my-model")
        spec = {**parsed[0], "path": path.strip()}
    elif isinstance(item, dict):
        spec = {"path": "", **item}
    else:
        raise MedwbError(f"{where} {item!r}: must be a string such as openvino-genai:int8/f32 or a mapping")
    variant = {k: v for k, v in spec.items() if k not in ("path", "label")}
    spec["label"] = spec.get("label") or variants.label(variant) + (f"@{Path(spec['path']).name}" if spec["path"] else "")
    if spec.get("backend") in registry.names() and not registry.get(spec["backend"]).serves:
        raise MedwbError(f"{where} {spec['label']}: {spec['backend']} is a one-shot command-line tool and "
                         "cannot serve a long-lived worker; use a backend that loads as a library (e.g. "
                         "bigdl:sym_int4, the same kernels through the API)")
    problems = variants.variant_problems(variant, where, Path(spec["path"] or "."))
    if problems:
        raise MedwbError("; ".join(problems))
    return spec


def split_threads(n_workers: int, threads: int = 0) -> int:
    """Threads per worker: the cores shared out (at least one each) unless ``threads`` is set.
    Oversubscribed cores hurt most with bigdl, whose kernel threads spin while they wait."""
    return threads if threads > 0 else max(1, default_threads() // max(1, n_workers))


def thread_env(threads: int, spec: dict | None = None) -> dict:
    """The environment of a model process: OpenMP/MKL pools sized to its share of the cores,
    and, given the load ``spec``, its backend's process knobs (bigdl-llm-init's preloads)."""
    from medwb.backends import registry
    extra = registry.get(spec["backend"]).process_env(spec) if spec else {}
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **extra}


def load_spec(spec: dict, path: Path, threads: int) -> dict:
    """What a model process loads (``load_model``): the backend at its precision from ``path``,
    and the model's chat template (from the artifact, else the checkpoint it was made from),
    which the process renders every prompt with."""
    from medwb.backends import registry, variants
    from medwb.models import chat
    template = chat.template_of(path) or chat.template_of(spec["path"] or variants.resolve_model("demo"))
    return {"backend": spec["backend"], "precision": spec["precision"], "model_path": str(path),
            "threads": threads, "kernel_build": "match" if registry.get(spec["backend"]).kernel_builds else "",
            "chat": template}


def resolve_artifact(spec: dict, log=lambda *_: None) -> Path:
    """The folder the worker loads: a given artifact as is; otherwise the IR or low-bit folder
    built once from the checkpoint in the medwb cache (shared with ``medwb bench``)."""
    from medwb.backends import registry, variants
    from medwb.paths import check_model_dir
    parameter = f"model path of {spec['label']}"
    entry = registry.get(spec["backend"])
    if spec["path"]:
        given = Path(spec["path"]).expanduser()
        if entry.given_artifact(given):
            return entry.given_artifact(given)
        model_dir = check_model_dir(given, parameter)
    else:
        model_dir = variants.resolve_model("demo")
    variant = {k: spec[k] for k in ("backend", "precision", "weights") if spec.get(k)}
    art = variants.prepare(model_dir, [variant], {"threads": 0, "timeout_s": 1800}, log=log)[variants.label(variant)]
    if "error" in art:
        raise MedwbError(f"{spec['label']}: preparing {variant} failed: {art['error']}")
    return Path(art["path"])


class Job:
    """One generation as its submitter sees it; ``event`` delivers the worker's start / text /
    done (the first done ends it, a later one is ignored)."""

    def __init__(self, job_id: int, on_event):
        self.job_id, self.on_event = job_id, on_event
        self.started = None        # when the worker began it (monotonic, parent clock)
        self.done = threading.Event()
        self.result: dict | None = None
        self._lock = threading.Lock()

    def event(self, kind: str, msg: dict) -> None:
        if kind == "done":
            with self._lock:
                if self.result is not None:
                    return
                self.result = msg
        elif kind == "start":
            self.started = time.monotonic()
        self.on_event(kind, msg)
        if kind == "done":
            self.done.set()


class ModelWorker:
    """One model in its own process. ``start()`` returns at once; loading happens in the
    background. Jobs sent before the model is ready wait in the worker's input."""

    def __init__(self, spec: dict, threads: int, log_dir: Path, load_timeout_s: float = 900,
                 generate_timeout_s: float = 300):
        self.spec, self.threads, self.log_dir = spec, threads, Path(log_dir)
        self.load_timeout_s, self.generate_timeout_s = load_timeout_s, generate_timeout_s
        self.state, self.error, self.info = "new", None, {}
        # restartable: it crashed or ran over a time limit after loading, so the next round
        # starts it again (a model that cannot load is not retried every round).
        self.restarts, self.restartable, self._generation = 0, False, 0
        self._proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self._jobs: dict[int, Job] = {}
        self._ready = threading.Event()
        self._unsent: list[str] = []
        self._started_at = 0.0

    @property
    def label(self) -> str:
        return self.spec["label"]

    # ---------------------------------------------------------------- life cycle
    def start(self, on_state=lambda worker: None) -> None:
        with self._lock:
            if self.state in ("starting", "ready"):
                return
            self.state, self.error, self._started_at = "starting", None, time.monotonic()
            self.restartable, self._generation = False, self._generation + 1
            self._ready.clear()
            self._on_state = on_state
        threading.Thread(target=self._launch, name=f"start {self.label}", daemon=True).start()
        threading.Thread(target=self._watchdog, args=(self._generation,), name=f"watch {self.label}",
                         daemon=True).start()

    def _launch(self) -> None:
        from medwb import envs
        from medwb.backends import registry
        entry = registry.get(self.spec["backend"])
        try:
            self._set_state("starting", "preparing the model files")
            with _PREPARE_LOCK:
                path = resolve_artifact(self.spec)
                self._reserve_memory(path)
            python = envs.require(entry.env)
            self.info.update(model_path=str(path), fingerprint=model_identity(path), python=str(python))
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / (self.label.replace("/", "_").replace(":", "_").replace("@", "_") + ".log")
            self.info["log"] = str(log_path)
            spec = load_spec(self.spec, path, self.threads)
            env = {**thread_env(self.threads, spec), "PYTHONUNBUFFERED": "1"}
            with open(log_path, "ab") as log:  # the child keeps its own handle
                proc = subprocess.Popen([str(python), "-m", "medwb.apps.workers"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=log, env=env,
                                        text=True, encoding="utf-8", bufsize=1)
            with self._lock:
                self._proc = proc
                proc.stdin.write(json.dumps(spec) + "\n")
                for line in self._unsent:
                    proc.stdin.write(line)
                self._unsent.clear()
                proc.stdin.flush()
            self._set_state("starting", "loading the model")
            self._read(proc)
        except Exception as e:  # noqa: BLE001  (any failure belongs in this model's card)
            self._fail(f"{type(e).__name__}: {e}" if not isinstance(e, MedwbError) else str(e))

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            event = msg.pop("event")
            if event == "ready":
                self.info.update(msg)
                self._ready.set()
                self._set_state("ready")
            elif event == "error":  # the model did not load: nothing will run
                self._fail(msg["message"])
                return
            else:
                self._job_event(event, msg)
        proc.wait()
        if self._proc is proc and self.state != "stopped":
            self._fail(f"worker exited (status {proc.returncode}): {self._log_tail()}; it restarts at the next "
                       "generate", restartable=self._ready.is_set())

    def _job_event(self, event: str, msg: dict) -> None:
        job = self._jobs.get(msg["job"])
        if job is None:
            return
        if event == "done":
            self._finish(job, msg)
        else:
            job.event(event, msg)

    def _finish(self, job: Job, result: dict) -> None:
        with self._lock:
            self._jobs.pop(job.job_id, None)
        job.event("done", result)

    def _fail(self, message: str, restartable: bool = False) -> None:
        with self._lock:
            self.state, self.error, self.restartable = "failed", message, restartable
            self._proc = None
            jobs = list(self._jobs.values())
        self._ready.set()
        self._notify()
        for job in jobs:
            self._finish(job, {"job": job.job_id, "status": "error", "error": message})

    def _reserve_memory(self, path: Path) -> None:
        """Refuse to load a model that does not fit beside the ones loading with it."""
        from medwb.paths import dir_size_bytes
        from medwb.sysinfo import check_ram
        need = int(dir_size_bytes(path) * WORKER_RAM_FACTOR + WORKER_RAM_BASE)
        others = sum(b for w, b in _LOADING.items() if w != id(self))
        check_ram(need + others, f"loading {self.label}" + (f" beside {others / 2**30:.1f} GiB for the models "
                                                            "loading with it" if others else ""),
                  f"{WORKER_RAM_FACTOR:g}x its files + {WORKER_RAM_BASE / 2**30:.1f} GiB", "use fewer or smaller "
                  "models (e.g. INT4), or a machine with more memory")
        _LOADING[id(self)] = need

    def _release_memory(self) -> None:
        if self.state != "starting":  # loaded (its memory now in use), failed or stopped
            with _PREPARE_LOCK:
                _LOADING.pop(id(self), None)

    def _set_state(self, state: str, detail: str = "") -> None:
        self.state, self.detail = state, detail
        self._notify()

    def _notify(self) -> None:
        self._release_memory()
        try:
            self._on_state(self)
        except Exception:  # noqa: BLE001  (a display problem must not kill the worker)
            pass

    def _log_tail(self) -> str:
        try:
            lines = [x for x in Path(self.info["log"]).read_text(errors="replace").splitlines() if x.strip()]
            return lines[-1] if lines else "no output"
        except (OSError, KeyError):
            return "no log"

    def _watchdog(self, generation: int) -> None:
        """Load and generation time limits. A worker past one is killed (it may be stuck in
        native code) and its jobs end as 'timeout'; the next round starts it again."""
        while self.state in ("starting", "ready") and generation == self._generation:
            time.sleep(0.2)
            now = time.monotonic()
            if self.state == "starting" and now - self._started_at > self.load_timeout_s:
                self._kill(f"did not load within {self.load_timeout_s:.0f} s (load_timeout_s)", "timeout")
            for job in list(self._jobs.values()):
                if job.started and now - job.started > self.generate_timeout_s:
                    self._kill(f"no answer within {self.generate_timeout_s:.0f} s (generate_timeout_s); "
                               "the worker was stopped and restarts at the next generate", "timeout")

    def _kill(self, message: str, status: str) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
            self.state, self.error, self.restartable = "failed", message, True
            jobs = list(self._jobs.values())
        if proc and proc.poll() is None:
            proc.kill()
        self._ready.set()
        self._notify()
        for job in jobs:
            self._finish(job, {"job": job.job_id, "status": status, "error": message})

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.state == "ready"

    def stop(self) -> None:
        with self._lock:
            proc, self._proc, self.state = self._proc, None, "stopped"
        self._release_memory()
        if proc and proc.poll() is None:
            try:
                proc.stdin.close()  # EOF: the worker finishes and exits
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()

    # ---------------------------------------------------------------- jobs
    def submit(self, job_id: int, fields: dict, template: str, max_new_tokens: int, on_event,
               kind: str = "diagnosis") -> Job:
        """Queue one generation; ``on_event(kind, msg)`` gets start / text / done. A failed
        worker (crash, timeout) is started again first; one that cannot load fails the job."""
        if self.state == "failed" and self.restartable:
            self.restarts += 1
            self.start(self._on_state)
        job = Job(job_id, on_event)
        with self._lock:
            if self.state == "failed":
                error = self.error
            else:
                error = None
                self._jobs[job_id] = job
                self._send({"job": job_id, "kind": kind, "fields": fields, "template": template,
                            "max_new_tokens": max_new_tokens})
        if error:
            self._finish(job, {"job": job_id, "status": "error", "error": error})
        return job

    def cancel(self, job_id: int) -> None:
        with self._lock:
            if job_id in self._jobs:
                self._send({"cancel": job_id})

    def _send(self, msg: dict) -> None:
        line = json.dumps(msg, ensure_ascii=False) + "\n"
        if self._proc is None:
            self._unsent.append(line)
            return
        try:
            self._proc.stdin.write(line)
            self._proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the reader thread reports the exit


# ====================================================================== worker side

def serve() -> int:
    # The protocol owns the real stdout; anything a library prints goes to stderr (the log).
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    lock = threading.Lock()

    def emit(event: str, **fields) -> None:
        with lock:
            proto.write(json.dumps({"event": event, **fields}, ensure_ascii=False) + "\n")
            proto.flush()

    spec = json.loads(sys.stdin.readline())
    try:
        backend, info = load_model(spec)
    except Exception as e:  # noqa: BLE001
        emit("error", message=str(e) if isinstance(e, MedwbError) else f"{type(e).__name__}: {e}")
        return 1
    emit("ready", **info)

    requests: queue.Queue = queue.Queue()
    cancelled: set[int] = set()

    def read_requests() -> None:  # a thread, so a cancel arrives while a job runs
        for line in sys.stdin:
            msg = json.loads(line)
            if "cancel" in msg:
                cancelled.add(msg["cancel"])
            else:
                requests.put(msg)
        requests.put(None)
    threading.Thread(target=read_requests, daemon=True).start()

    from medwb.models import chat
    render = chat.renderer(spec.get("chat"))
    while (req := requests.get()) is not None:
        emit(**_run_job(backend, info["context"], req, cancelled, emit, render))
    return 0


def load_model(spec: dict):
    """In the model process: the backend (``medwb.backends.loader``) and what the page shows
    of it (load time, context length, description, pid)."""
    from medwb.backends.loader import load_in_child
    from medwb.paths import model_config
    loaded = load_in_child(spec)
    context = int(model_config(spec["model_path"]).get("max_position_embeddings") or 2048)
    return loaded.runtime, {"load_s": round(loaded.import_s + loaded.load_s, 2), "context": context,
                            "describe": loaded.runtime.describe(), "pid": os.getpid()}


def _run_job(backend, context: int, req: dict, cancelled: set, emit, render=None) -> dict:
    from medwb.apps import fitting
    job = req["job"]
    if job in cancelled:
        return {"event": "done", "job": job, "status": "cancelled", "text": "", "error": "cancelled before it started"}
    started = time.perf_counter()
    try:
        workflow = fitting.fitter(req.get("kind", "diagnosis"))
        _, prompt_ids, warning = workflow.fit_prompt(req["fields"], backend.encode, context,
                                                     req["max_new_tokens"], req["template"], chat=render)
        n_prompt = len(prompt_ids)
        emit("start", job=job, prompt_tokens=n_prompt, truncation=warning)
        chunks: list[str] = []

        def on_text(chunk: str) -> bool:
            chunks.append(chunk)
            emit("text", job=job, text=chunk)
            return job in cancelled
        res = backend.stream(prompt_ids, req["max_new_tokens"], on_text)
    except Exception as e:  # noqa: BLE001  (this job fails; the worker keeps serving)
        return {"event": "done", "job": job, "status": "error", "text": "",
                "error": str(e) if isinstance(e, MedwbError) else f"{type(e).__name__}: {e}"}
    return {"event": "done", "job": job, "status": "cancelled" if res["stopped"] else "ok",
            # A budget that ends inside a multi-byte character leaves a replacement mark: dropped.
            "text": (res["text"] if res["text"] is not None else "".join(chunks)).rstrip("\ufffd"),
            "prompt_tokens": n_prompt, "new_tokens": res["n_new_tokens"], "truncation": warning,
            "ttft_ms": round(res["ttft_ms"], 1) if res["ttft_ms"] is not None else None,
            "total_ms": round((time.perf_counter() - started) * 1e3, 1)}


if __name__ == "__main__":
    sys.exit(serve())
