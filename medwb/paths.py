"""Where things live: the repository, the cache, the run folders; atomic writes."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from medwb.errors import MedwbError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = REPO_DIR / "data"


def sha256_file(path) -> str:
    """The file's SHA-256, read in 1 MiB blocks (model weights, wheels)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(folder, content: bool = False) -> str:
    """The one identity of a model folder (its files, ``*.lock`` left out), 16 hex digits.

    ``content=False``: every file's name and size plus ``config.json``'s bytes: cheap (no
    gigabytes read), and it changes when the weights are rebuilt or replaced; the feedback
    store and the cluster's "same model on this node?" check use it.
    ``content=True``: names and every byte: the evaluation's answer cache, where a checkpoint
    changed in place must never reuse old answers."""
    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock")):
        name = path.relative_to(folder).as_posix()
        if content:
            h.update(name.encode())
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(f"{name}:{path.stat().st_size}\n".encode())
            if path.name == "config.json":
                h.update(path.read_bytes())
    return h.hexdigest()[:16]
NOTEBOOKS_DIR = REPO_DIR / "notebooks"
VENVS_DIR = REPO_DIR / ".venvs"

# Weight files by which a directory is recognised as a model of a given kind.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                   "pytorch_model.bin.index.json")
OPENVINO_IR_FILES = ("openvino_model.xml",)


def cache_dir() -> Path:
    """The cache root: $MEDWB_CACHE, else $XDG_CACHE_HOME/medwb, else ~/.cache/medwb.

    Outside the repository on purpose: a fresh clone on the same machine reuses the
    demo model instead of training it again.
    """
    if os.environ.get("MEDWB_CACHE"):
        return Path(os.environ["MEDWB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "medwb"


def runs_dir() -> Path:
    return Path(os.environ.get("MEDWB_RUNS", REPO_DIR / "runs"))


def check_model_dir(path, parameter: str = "model_path") -> Path:
    """Return ``path`` as a Path if it is a local model directory, else raise MedwbError.

    Never falls back to a hub download: a name like "THUDM/chatglm-6b" that is not a
    local directory is an error naming that path.
    """
    if path is None or str(path).strip() == "":
        raise MedwbError(f"{parameter} is empty: pass a local model directory "
                         "(the demo model: `medwb demo-model` prints its path)")
    p = Path(path).expanduser()
    if not p.exists():
        raise MedwbError(f"{parameter} '{p}' does not exist: pass a local model directory "
                         "(models are never downloaded)")
    if not p.is_dir():
        raise MedwbError(f"{parameter} '{p}' is not a directory: pass the folder that holds "
                         "config.json and the weights")
    has_weights = any((p / f).exists() for f in HF_WEIGHT_FILES + OPENVINO_IR_FILES)
    if not (p / "config.json").exists() or not has_weights:
        raise MedwbError(f"{parameter} '{p}' is not a model directory: it needs config.json and "
                         f"one of {', '.join(HF_WEIGHT_FILES + OPENVINO_IR_FILES)}")
    return p


def model_config(model_dir) -> dict:
    """The checkpoint's config.json as a dict."""
    return json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))


def checkpoint_bytes(model_dir) -> int:
    """Size of the checkpoint's weight files (safetensors, else pytorch_model*.bin)."""
    files = list(Path(model_dir).glob("*.safetensors")) or list(Path(model_dir).glob("pytorch_model*.bin"))
    return sum(p.stat().st_size for p in files)


def checkpoint_dtype(model_dir) -> str:
    """The weights' dtype as config.json names it (``torch_dtype`` for transformers 4.x,
    ``dtype`` for 5.x): float32 when it says nothing or cannot be read."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    return str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")


def dir_size_bytes(path) -> int:
    """Bytes of every regular file below ``path`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def check_writable_dir(path, parameter: str = "out_dir") -> Path:
    """``path`` is a folder that exists or can be made, and can be written: tried by making
    (and removing) an empty folder in it or in its nearest existing parent, because
    permission bits say nothing for root and nothing about /proc or a read-only mount.
    Nothing is left behind; ``path`` itself is not created."""
    out = Path(path).expanduser()
    existing = out if out.exists() else next((p for p in out.parents if p.exists()), Path("/"))
    if not existing.is_dir():
        raise MedwbError(f"{parameter} '{out}': '{existing}' is a file, not a folder; give a folder path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".medwb-write-check-", dir=existing))
    except OSError as e:
        raise MedwbError(f"{parameter} '{out}' is not writable ({e.strerror}): choose a folder you can write "
                         "to") from None
    return out


def read_settings_file(path, label: str, fix: str) -> dict:
    """A YAML file of settings (a mapping), or one line naming ``label`` and what is wrong:
    missing (``fix`` says what to give), not YAML (where), or not a mapping."""
    import yaml
    p = Path(path)
    if not p.is_file():
        raise MedwbError(f"{label} '{p}' does not exist: {fix}")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MedwbError(f"{label} '{p}' is not valid YAML{where} ({getattr(e, 'problem', None) or e}): "
                         "fix that line (a setting per line, NAME: VALUE)") from None
    if not isinstance(loaded, dict):
        raise MedwbError(f"{label} '{p}' must hold a mapping of settings")
    return loaded


def linear_input_dims(model_dir) -> dict:
    """The sizes every Linear layer takes as input (hidden and FFN), from config.json.

    Low-bit kernels (bigdl) and grouped weight compression (OpenVINO int4) constrain them.
    """
    cfg = model_config(model_dir)
    return {k: cfg[k] for k in ("hidden_size", "intermediate_size") if k in cfg}


@contextlib.contextmanager
def build_lock(lock_file: Path, waiting: str, log=print):
    """Held while one process checks for an artifact and builds it, so that a second process
    asking for the same one waits (and ``log``s ``waiting``) and then finds it built, instead of
    building it beside the first (atomic_dir keeps a reader from a half-written folder, not
    two builders from each other). The lock goes with its holder's process, killed or not.
    Where the lock cannot be created (a read-only shared cache, only read from) it goes on
    unlocked."""
    from filelock import FileLock, Timeout
    try:
        Path(lock_file).parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_file))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log(waiting)
            lock.acquire()
    except OSError:
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = False):
    """Build a directory under a temporary name next to ``final``, rename on success.

    On any error the temporary directory is removed, so readers never see a half-written
    artifact. Yields the temporary path to write into.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(final)
    # The builder's pid in the name: a build killed before it could clean up (SIGKILL, a
    # power cut) leaves its folder, and the next build of the same artifact removes it.
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; others may need to read it
        if final.exists():
            if not overwrite:
                raise MedwbError(f"'{final}' already exists; pass --force to replace it")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        fix = (f"nothing was kept: free space in '{final.parent}' (or point MEDWB_CACHE / the output folder "
               "at a larger disk) and run again")
        full = _disk_full(e)
        if full:
            raise MedwbError(f"'{final}': the disk is full (or a file size limit was reached) while writing it "
                             f"({full}); {fix}") from e
        if any(_STREAM_FAILURE in str(x) for x in _chain(e)):
            raise MedwbError(f"'{final}': writing it failed ({_STREAM_FAILURE}: a C++ file writer, e.g. OpenVINO's, "
                             f"could not write; the disk may be full); {fix}") from e
        raise


# What a full disk looks like from Python (OSError) and from the libraries' C++ writers,
# which turn it into a RuntimeError with the system's message.
_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_FULL_TEXTS = ("No space left on device", "File too large", "Disk quota exceeded")
# libstdc++'s text when a stream with exceptions enabled fails: OpenVINO's serializer raises it
# for a write that did not go through, without the system's reason.
_STREAM_FAILURE = "basic_ios::clear: iostream error"


def _chain(e: BaseException | None):
    """``e`` and the exceptions it was raised from or while handling (torch's zip writer
    raises its own error while handling the stream's)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _disk_full(e: BaseException) -> str | None:
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno in _FULL_ERRNOS:
            return x.strerror or os.strerror(x.errno)
        if any(t in str(x) for t in _FULL_TEXTS):
            return next(t for t in _FULL_TEXTS if t in str(x))
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_abandoned(final: Path) -> list[Path]:
    """Remove the temporary folders that builds of ``final`` left when they were killed
    (``.NAME.tmp-PID-*``, ``.NAME.old-PID``) whose process no longer exists; a live
    builder's are left alone. Returns what was removed. They were never read (the artifact
    appears only by the final rename), but a killed 1B-model export leaves gigabytes."""
    removed = []
    for p in Path(final).parent.glob(f".{Path(final).name}.*"):
        kind, _, rest = p.name[len(Path(final).name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    with atomic_file(path, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb"):
    """An open temporary file beside ``path``, renamed to ``path`` when the block ends
    without an error (removed otherwise): ``path`` is complete or absent, never partial."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
