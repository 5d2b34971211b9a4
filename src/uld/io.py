"""Files that survive crashes: atomic records, folder swaps, locks, strict readers.

Every write in the package goes through this module, so its guarantees hold everywhere:

* A record is written to a temporary file in its folder, flushed to disk, then renamed over the old
  one (:func:`replace`): a reader sees the old file or the new one, never half of one.
* A folder (a checkpoint, a training state, a teacher stage) is built beside its final place and
  swapped in (:func:`swap_dir`): the old folder is renamed to ``.<name>.old`` before the new one takes
  its name, and :func:`recover_dir` undoes an interrupted swap. A killed process therefore leaves
  either the old folder or the new one under the final name, once recovered.
* Appends to a log are single ``write`` calls on an ``O_APPEND`` descriptor, so lines never
  interleave; a torn last line (a kill mid-append) is dropped by :func:`read_jsonl`.
* Locks are ``flock`` locks, which the kernel releases when their process dies, so a lock of a dead
  process is never in the way; the lock file records its holder so a second writer can be told who
  holds it.
* A write that the system refuses (read-only store, full disk) raises :class:`StoreWriteError` naming
  the file, and leaves the old record as it was.
* Readers raise :class:`ResultsError` naming the file (and line) on bad JSON, bad UTF-8, or a corrupt
  parquet / numpy / safetensors file, instead of a library traceback.

Fault injection (tests): every file replace, folder swap and log append is a *fault point*. With
``ULD_FAULT_LOG=<file>`` each point appends ``<index> <kind> <before|after> <path>`` to that file; with
``ULD_FAULT_AT=<index>`` the process dies (``os._exit(137)``, like a SIGKILL) at that point (every process of
a launch counts its own points; ``{rank}`` in the log's name separates their logs). The
crash-recovery tests kill the real command line at every point and check that a rerun ends with the
artefacts of an uninterrupted run.

Dependency rule: this module imports only :mod:`uld.errors` from the package.
"""

from __future__ import annotations

import hashlib
import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

from uld.errors import ResultsError, RunLocked, StoreWriteError

__all__ = [
    "replace",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "append_jsonl",
    "write_jsonl",
    "read_text",
    "read_json",
    "read_jsonl",
    "read_parquet",
    "write_parquet",
    "load_npy",
    "save_tensors",
    "load_tensors",
    "swap_dir",
    "recover_dir",
    "copy_dir",
    "remove",
    "file_lock",
    "holder_of",
    "fault_point",
    "sha256_file",
    "json_dumps",
    "repo_root",
]

FAULT_AT_ENV = "ULD_FAULT_AT"
FAULT_LOG_ENV = "ULD_FAULT_LOG"
_FAULT_COUNT = 0


def repo_root() -> Path:
    """The source checkout this package runs from (experiments/, results/ and paper_tables/ live there)."""
    return Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------------
# Fault points
# --------------------------------------------------------------------------------------------------


def fault_point(kind: str, phase: str, path: str | os.PathLike) -> None:
    """Count one fault point; log it and/or die there when the environment asks for it."""
    global _FAULT_COUNT
    at, log = os.environ.get(FAULT_AT_ENV), os.environ.get(FAULT_LOG_ENV)
    if not at and not log:
        return
    _FAULT_COUNT += 1
    if log:
        line = f"{_FAULT_COUNT} {kind} {phase} {path}\n".encode()
        # "{rank}" in the log's name gives each process of a launch a log of its own points
        fd = os.open(log.replace("{rank}", os.environ.get("RANK", "0")), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    if at and int(at) == _FAULT_COUNT:
        sys.stderr.flush()
        os._exit(137)


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


# errors that are the machine's limits (space, quota, file size, a read-only disk), not the code's faults
LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS})


def write_error(path: Path, exc: OSError) -> StoreWriteError:
    why = {errno.ENOSPC: "the disk is full", errno.EROFS: "the store is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.EDQUOT: "the disk quota is exceeded",
           errno.EFBIG: "the file-size limit is exceeded (ulimit -f)"}.get(exc.errno or 0, exc.strerror or str(exc))
    return StoreWriteError(f"cannot write {path}: {why}; the previous version (if any) is unchanged")


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rename ``src`` over ``dst`` (atomic within a file system): the one file-replace of the package."""
    src, dst = Path(src), Path(dst)
    fault_point("replace", "before", dst)
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise write_error(dst, exc) from None
    fault_point("replace", "after", dst)
    return dst


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise exc if isinstance(exc, StoreWriteError) else write_error(path, exc) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_dumps(obj: Any, *, indent: Optional[int] = 2) -> str:
    """JSON text of a record: NaN and infinities become null (JSON has no spelling for them)."""
    return json.dumps(_finite(obj), indent=indent, ensure_ascii=False, default=str, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and (obj != obj or obj in (float("inf"), float("-inf"))):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json_dumps(obj) + "\n")


def write_jsonl(path: str | os.PathLike, records: list[dict]) -> Path:
    """A whole JSONL file, atomically."""
    return atomic_write_text(path, "".join(json_dumps(r, indent=None) + "\n" for r in records))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line with a single ``write`` (concurrent appenders never interleave lines)."""
    path = Path(path)
    line = (json_dumps(record, indent=None) + "\n").encode()
    fault_point("append", "before", path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "short write")
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    fault_point("append", "after", path)


def write_parquet(df: Any, path: str | os.PathLike, *, metadata: Optional[dict] = None) -> Path:
    """A DataFrame as parquet, atomically; ``metadata`` (JSON) rides in the schema under ``uld``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.Table.from_pandas(df, preserve_index=False)
    if metadata is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"uld": json.dumps(metadata).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return atomic_write_bytes(path, sink.getvalue().to_pybytes())


def save_tensors(tensors: dict, path: str | os.PathLike, *, metadata: Optional[dict[str, str]] = None) -> Path:
    """torch tensors as one safetensors file, atomically (safetensors: no code can ride in it)."""
    from safetensors.torch import save

    return atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def _old(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover_dir(final: str | os.PathLike) -> Path:
    """Finish or undo an interrupted :func:`swap_dir` of ``final``: afterwards ``final`` is the last
    complete folder (the new one if the swap got that far, else the old one) and no ``.old`` is left."""
    final = Path(final)
    old = _old(final)
    if old.exists():
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            replace(old, final)
    return final


def swap_dir(staged: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the complete folder ``staged`` to ``final``; the old ``final`` is removed only afterwards."""
    staged, final = Path(staged), Path(final)
    recover_dir(final)
    old = _old(final)
    fault_point("swap", "before", final)
    if final.exists():
        replace(final, old)
    replace(staged, final)
    fault_point("swap", "after", final)
    shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(final.parent)
    return final


def copy_dir(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy a folder to ``dest`` through a staged copy and :func:`swap_dir`."""
    src, dest = Path(src), Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(src, tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise write_error(dest, exc) from None
    return swap_dir(tmp, dest)


def remove(path: str | os.PathLike) -> None:
    """Delete a file or folder if present (a fault point: deleting is a change of the store too)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    fault_point("remove", "before", path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    fault_point("remove", "after", path)


# --------------------------------------------------------------------------------------------------
# Locks
# --------------------------------------------------------------------------------------------------


def holder_of(lock_path: str | os.PathLike) -> dict:
    """What the lock file says about its (last) holder: pid, host, command, since."""
    try:
        return json.loads(Path(lock_path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if holder.get("since") else "?"
    return f"pid {holder.get('pid')} on {holder.get('host')} since {since} ({holder.get('command', '?')})"


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, blocking: bool = True, what: str = "") -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (created if absent) for the ``with`` block.

    Non-blocking mode raises :class:`RunLocked` naming the holder (pid, host, command, since). A lock
    file left by a dead process is not a lock: ``flock`` is released by the kernel when its holder dies.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise write_error(path, exc) from None
    acquired = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(
                    f"{what or path} is being computed by {_describe(holder_of(path))}; wait for it, or pass --wait"
                ) from None
            raise
        previous = holder_of(path)
        if previous.get("pid") and not _alive(previous["pid"]):
            warnings.warn(f"{path}: taking over the lock of pid {previous['pid']}, which is no longer running", stacklevel=3)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": " ".join(sys.argv[:3])}
        acquired = True
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError:  # a full disk: the lock holds without its holder record (which only names it)
            pass
        yield path
    finally:
        if acquired:
            # a holder record left in the file means its process died holding the lock
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor drops the lock


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_text(path: str | os.PathLike) -> str:
    """UTF-8 text of a file; bad bytes are an error naming the file and the byte offset."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path}: not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 4]!r})") from None


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}: invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL file. A torn last line (a job killed mid-append) is skipped with a warning;
    a bad line anywhere else is an error naming file and line."""
    path = Path(path)
    text = read_text(path)
    lines = text.split("\n")
    torn_tail = not text.endswith("\n") and text != ""
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn_tail and i == len(lines):
                warnings.warn(f"{path}:{i}: skipping an incomplete last line", stacklevel=2)
                continue
            raise ResultsError(f"{path}:{i}: invalid JSON line: {exc.msg}") from None
        if not isinstance(rec, dict):
            raise ResultsError(f"{path}:{i}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out


def read_parquet(path: str | os.PathLike, *, columns: Optional[list[str]] = None):
    """A parquet file as a DataFrame; a corrupt file is an error naming it."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return pq.read_table(path, columns=columns).to_pandas()
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise ResultsError(f"{path}: unreadable parquet file ({type(exc).__name__}: {exc})") from None


def parquet_metadata(path: str | os.PathLike) -> dict:
    """The ``uld`` JSON metadata :func:`write_parquet` stored in a parquet file ({} if none)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:
        raise ResultsError(f"{path}: unreadable parquet file ({type(exc).__name__}: {exc})") from None
    raw = meta.get(b"uld") or meta.get(b"uld_chunk")
    return json.loads(raw) if raw else {}


def load_npy(path: str | os.PathLike, *, mmap: bool = True):
    """A ``.npy`` array (memory-mapped; never a pickle); a corrupt file is an error naming it."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ResultsError(f"{path}: unreadable .npy file ({exc})") from None


def load_tensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(tensors, metadata)`` of a safetensors file; a corrupt file is an error naming it."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise ResultsError(f"{path}: unreadable safetensors file ({type(exc).__name__}: {exc})") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
