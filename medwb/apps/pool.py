"""One model pool per app server, shared by every open page.

In app mode (``medwb app``) every page is its own notebook kernel; if each started its
own model workers, ten doctors would start thirty model copies. Instead the server starts
one ``ModelWorker`` per configured model (``medwb.apps.workers``: its own process, crash
restart, load and generation time limits, cancellation) and the pages reach them through
this pool over a Unix socket (a file only this user may open: no TCP port, nothing another
machine can reach).

Fairness: a model generates one answer at a time, and each model keeps one queue per
page; when it finishes, the next answer comes from the next page in turn, so a page that
sends many requests cannot starve another. A page that closes has its queued requests
dropped and its running one cancelled.

Protocol (JSON lines, both ways): the page sends ``hello`` and gets the models and their
states; then ``submit`` (slot, job, fields, template, max_new_tokens, kind) and ``cancel``
(slot, job); the pool sends ``state`` (one model's state changed) and ``job`` events
(start / text / done, the done with ``queue_s``, the time the request waited for its turn).

``PooledWorker`` gives a page's app the same interface as a ``ModelWorker``, so cards,
rounds and the feedback store work unchanged.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import socketserver
import threading
import time
from pathlib import Path

from medwb.apps import workers
from medwb.errors import MedwbError

# What a page sees of a model (the spec and the worker's info are copied as they are).
STATE_FIELDS = ("state", "detail", "error", "restarts", "restartable", "threads")


def _state(worker, slot: int) -> dict:
    return {"slot": slot, "label": worker.label, "spec": worker.spec, "info": dict(worker.info),
            **{k: getattr(worker, k, None) for k in STATE_FIELDS}}


# ====================================================================== the pool (server)

class _Slot:
    """One model's queues, one per page, served in turn."""

    def __init__(self, index: int, worker: workers.ModelWorker):
        self.index, self.worker = index, worker
        self.queues: dict[int, collections.deque] = {}
        self.turns: collections.deque[int] = collections.deque()  # pages with queued requests
        self.running: dict | None = None
        self.lock = threading.RLock()
        self._ids = 0

    def enqueue(self, page: "_Page", req: dict) -> None:
        item = {"page": page, "job": req["job"], "req": req, "queued_at": time.monotonic()}
        with self.lock:
            self.queues.setdefault(page.id, collections.deque()).append(item)
            if page.id not in self.turns:
                self.turns.append(page.id)
            self._dispatch()

    def _dispatch(self) -> None:
        with self.lock:
            while self.running is None and self.turns:
                page_id = self.turns.popleft()
                queue = self.queues.get(page_id)
                if not queue:
                    continue
                item = queue.popleft()
                if queue:
                    self.turns.append(page_id)  # its next request waits for the others' turns
                self._ids += 1
                item.update(pool_job=self._ids, queue_s=round(time.monotonic() - item["queued_at"], 3))
                self.running = item
                req = item["req"]
                self.worker.submit(self._ids, req["fields"], req["template"], req["max_new_tokens"],
                                   lambda kind, msg, it=item: self._event(it, kind, msg), kind=req["kind"])

    def _event(self, item: dict, kind: str, msg: dict) -> None:
        msg = {**msg, "job": item["job"]}
        if kind == "done":
            msg["queue_s"] = item["queue_s"]
            # The slot is free before the page hears "done", so a status read then is current
            # (it counted the finished answer as still running).
            with self.lock:
                if self.running is item:
                    self.running = None
        item["page"].send({"event": "job", "slot": self.index, "kind": kind, "msg": msg})
        if kind == "done":
            self._dispatch()

    def cancel(self, page: "_Page", job: int) -> None:
        with self.lock:
            queue = self.queues.get(page.id) or ()
            for item in list(queue):
                if item["job"] == job:
                    queue.remove(item)
                    page.send({"event": "job", "slot": self.index, "kind": "done",
                               "msg": {"job": job, "status": "cancelled", "text": "", "queue_s": None}})
                    return
            if self.running and self.running["page"] is page and self.running["job"] == job:
                self.worker.cancel(self.running["pool_job"])

    def drop(self, page: "_Page") -> None:
        """A page closed: forget its queue, stop its running answer."""
        with self.lock:
            self.queues.pop(page.id, None)
            if page.id in self.turns:
                self.turns.remove(page.id)
            if self.running and self.running["page"] is page:
                self.worker.cancel(self.running["pool_job"])

    def depth(self) -> int:
        with self.lock:
            return sum(len(q) for q in self.queues.values()) + (self.running is not None)


class _Page(socketserver.StreamRequestHandler):
    """One connected page (one notebook kernel)."""

    def setup(self) -> None:
        super().setup()
        self.pool: ModelPool = self.server.pool
        self._send_lock = threading.Lock()
        self.closed = False
        self.id = self.pool.register(self)  # last: from here on, state broadcasts reach it

    def send(self, msg: dict) -> None:
        if self.closed:
            return
        data = (json.dumps(msg, ensure_ascii=False) + "\n").encode()
        try:
            with self._send_lock:
                self.wfile.write(data)
                self.wfile.flush()
        except (OSError, ValueError):
            self.closed = True

    def handle(self) -> None:
        for line in self.rfile:
            try:
                req = json.loads(line)
                op = req["op"]
                if op == "hello":
                    self.send({"event": "models", "models": self.pool.states(), "page": self.id})
                elif op == "submit":
                    self.pool.slot(req["slot"]).enqueue(self, req)
                elif op == "cancel":
                    self.pool.slot(req["slot"]).cancel(self, req["job"])
                else:
                    raise ValueError(f"unknown op {op!r}")
            except (ValueError, KeyError, TypeError, IndexError) as e:
                self.send({"event": "refused", "message": f"{type(e).__name__}: {e}"})

    def finish(self) -> None:
        self.closed = True
        self.pool.unregister(self)
        super().finish()


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class ModelPool:
    """The app server's models: started once, shared by every page through ``socket_path``."""

    def __init__(self, specs: list[dict], threads: int, log_dir: Path, socket_path: Path,
                 load_timeout_s: float = 900, generate_timeout_s: float = 300):
        self.socket_path = Path(socket_path)
        self.workers = [workers.ModelWorker(s, threads, log_dir, load_timeout_s, generate_timeout_s)
                        for s in specs]
        self.slots = [_Slot(i, wk) for i, wk in enumerate(self.workers)]
        self.pages: dict[int, _Page] = {}
        self._lock = threading.Lock()
        self._next_page = 0
        self._server: _Server | None = None

    @classmethod
    def from_config(cls, config: dict, run_dir: Path) -> "ModelPool":
        """The pool of an app config (``medwb.apps.serve.load_config``): its workers' logs and the
        socket in ``run_dir``, the cores shared out among the models unless threads is set."""
        threads = workers.split_threads(len(config["specs"]), config["threads"])
        return cls(config["specs"], threads, Path(run_dir) / "workers", Path(run_dir) / "pool.sock",
                   config["load_timeout_s"], config["generate_timeout_s"])

    # ---------------------------------------------------------------- pages
    def register(self, page: _Page) -> int:
        with self._lock:
            self._next_page += 1
            self.pages[self._next_page] = page
            return self._next_page

    def unregister(self, page: _Page) -> None:
        with self._lock:
            self.pages.pop(page.id, None)
        for slot in self.slots:
            slot.drop(page)

    def slot(self, index) -> _Slot:
        if not isinstance(index, int) or not 0 <= index < len(self.slots):
            raise IndexError(f"slot {index!r}: the pool has {len(self.slots)} models")
        return self.slots[index]

    def states(self) -> list[dict]:
        return [_state(wk, i) for i, wk in enumerate(self.workers)]

    def _broadcast_state(self, slot: int) -> None:
        msg = {"event": "state", **_state(self.workers[slot], slot)}
        with self._lock:
            pages = list(self.pages.values())
        for page in pages:
            page.send(msg)

    # ---------------------------------------------------------------- life cycle
    def start(self) -> None:
        """Start every model (loading goes on in the background) and listen."""
        for i, wk in enumerate(self.workers):
            wk.start(lambda _w, i=i: self._broadcast_state(i))
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        old = os.umask(0o177)  # the socket file is the access control: this user only
        try:
            self._server = _Server(str(self.socket_path), _Page)
        finally:
            os.umask(old)
        self._server.pool = self
        threading.Thread(target=self._server.serve_forever, name="model pool", daemon=True).start()

    def wait_ready(self, timeout: float = 900) -> list[dict]:
        deadline = time.monotonic() + timeout
        for wk in self.workers:
            wk.wait_ready(max(0.0, deadline - time.monotonic()))
        return [{"model": wk.label, "state": wk.state, "pid": wk.info.get("pid"), "error": wk.error}
                for wk in self.workers]

    def status(self) -> dict:
        """Pages connected, and per model its state, process and queue depth."""
        with self._lock:
            n_pages = len(self.pages)
        return {"pages": n_pages, "models": [
            {"model": wk.label, "state": wk.state, "pid": wk.info.get("pid"), "restarts": wk.restarts,
             "queued": slot.depth()} for wk, slot in zip(self.workers, self.slots)]}

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for wk in self.workers:
            wk.stop()
        try:
            self.socket_path.unlink()
        except OSError:
            pass


# ====================================================================== a page (client)

class PoolClient:
    """A page's connection to the pool; ``workers`` stand in for ModelWorkers."""

    def __init__(self, socket_path, connect_timeout_s: float = 10):
        path = Path(socket_path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(connect_timeout_s)
        try:
            self.sock.connect(str(path))
        except OSError as e:
            self.sock.close()
            raise MedwbError(f"pool {path}: cannot connect ({e.strerror or e}); start the app server with "
                             "'medwb app', or leave pool empty to start this page's own models") from None
        self._rfile = self.sock.makefile("rb")
        self._send_lock = threading.Lock()
        self._send({"op": "hello"})
        hello = {"event": "state"}
        try:
            while hello.get("event") == "state":  # a model changing state as we connect: the answer has it too
                hello = json.loads(self._rfile.readline() or b"{}")
        except (OSError, ValueError) as e:
            self.sock.close()
            raise MedwbError(f"pool {path}: no answer to hello ({type(e).__name__}); is the app server busy "
                             "or stopping? reload the page") from None
        if hello.get("event") != "models":
            self.sock.close()
            raise MedwbError(f"pool {path}: unexpected answer {hello!r}; is this a MedWB app server's socket?")
        self.sock.settimeout(None)
        self.page = hello["page"]
        self.workers = [PooledWorker(self, m) for m in hello["models"]]
        self.closed = False
        threading.Thread(target=self._read, name="pool client", daemon=True).start()

    def _send(self, msg: dict) -> None:
        data = (json.dumps(msg, ensure_ascii=False) + "\n").encode()
        with self._send_lock:
            self.sock.sendall(data)

    def send(self, msg: dict) -> bool:
        try:
            self._send(msg)
            return True
        except OSError:
            return False

    def _read(self) -> None:
        for line in self._rfile:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if msg.get("event") == "state":
                self.workers[msg["slot"]].update(msg)
            elif msg.get("event") == "job":
                self.workers[msg["slot"]].job_event(msg["kind"], msg["msg"])
        if not self.closed:  # the pool went away: every waiting answer ends with an error
            for wk in self.workers:
                wk.lost("the app server's model pool stopped; reload the page once it is back")

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class PooledWorker:
    """One of the pool's models as a page sees it: a ModelWorker's interface."""

    def __init__(self, client: PoolClient, state: dict):
        self.client, self.slot = client, state["slot"]
        self.spec, self.info = state["spec"], state["info"]
        self.state, self.detail, self.error = state["state"], state.get("detail") or "", state["error"]
        self.restarts, self.restartable = state.get("restarts") or 0, state.get("restartable")
        self.threads = state.get("threads")
        self._on_state = lambda worker: None
        self._ready = threading.Event()
        self._jobs: dict[int, workers.Job] = {}
        self._lock = threading.Lock()
        if self.state in ("ready", "failed"):
            self._ready.set()

    @property
    def label(self) -> str:
        return self.spec["label"]

    def update(self, state: dict) -> None:
        self.info = state["info"]
        self.state, self.detail, self.error = state["state"], state.get("detail") or "", state["error"]
        self.restarts, self.restartable = state.get("restarts") or 0, state.get("restartable")
        if self.state in ("ready", "failed"):
            self._ready.set()
        elif self.state == "starting":
            self._ready.clear()
        self._notify()

    def _notify(self) -> None:
        try:
            self._on_state(self)
        except Exception:  # noqa: BLE001  (a display problem must not stop the page)
            pass

    def start(self, on_state=lambda worker: None) -> None:
        """The pool started the model already: just follow its state."""
        self._on_state = on_state
        self._notify()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.state == "ready"

    def stop(self) -> None:
        """A page never stops a shared model; closing the page's connection drops its requests."""

    def submit(self, job_id: int, fields: dict, template: str, max_new_tokens: int, on_event,
               kind: str = "diagnosis") -> workers.Job:
        job = workers.Job(job_id, on_event)
        with self._lock:
            self._jobs[job_id] = job
        sent = self.client.send({"op": "submit", "slot": self.slot, "job": job_id, "fields": fields,
                                 "template": template, "max_new_tokens": max_new_tokens, "kind": kind})
        if not sent:
            self.job_event("done", {"job": job_id, "status": "error",
                                    "error": "the app server's model pool is not reachable"})
        return job

    def cancel(self, job_id: int) -> None:
        if job_id in self._jobs:
            self.client.send({"op": "cancel", "slot": self.slot, "job": job_id})

    def job_event(self, kind: str, msg: dict) -> None:
        job = self._jobs.get(msg["job"])
        if job is None:
            return
        if kind == "done":
            with self._lock:
                self._jobs.pop(job.job_id, None)
        job.event(kind, msg)

    def lost(self, message: str) -> None:
        self.state, self.error = "failed", message
        self._ready.set()
        self._notify()
        for job_id in list(self._jobs):
            self.job_event("done", {"job": job_id, "status": "error", "error": message})
