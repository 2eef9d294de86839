"""Writes shared by every command that produces a file or a directory: atomic, never clobbering, and
never deleting what hirm did not write.

* Every directory hirm writes holds a marker file, ``.hirm-output`` (JSON: kind, version, date and the
  files hirm wrote there). ``overwrite=True`` replaces a directory only when everything in it is
  accounted for by its marker (see :func:`foreign_entries`), and a file only when it is recognisably
  hirm's (a hirm patch, a hirm result JSON, or a file listed by its directory's marker).
* Long runs writing into one directory (sweeps, comparisons) hold a lock file, ``.hirm-lock``, with the
  holder's pid (:func:`directory_lock`); a lock whose process is gone is recovered.
* Outputs get the usual permissions (0666 / 0777 minus the umask), not the 0600 / 0700 of temporary
  files; a full disk is a one-line :class:`DiskFullError` and leaves nothing behind.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

MARKER = ".hirm-output"
LOCK = ".hirm-lock"
#: ``kind`` values of hirm's result JSON files (see :mod:`hirm.evaluation.common`).
RESULT_KINDS = ("canvas", "nudity", "utility", "sweep")
#: ``format`` metadata of the safetensors files hirm writes: patches and ESD's batched-run checkpoints.
OWNED_FORMATS = ("hirm-patch/", "hirm-esd-batched/")


class OutputExistsError(FileExistsError):
    """The output already exists and overwriting was not asked for (or it is not hirm's to replace)."""


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing; the partial output was removed."""


class DirectoryLockedError(RuntimeError):
    """Another live hirm process is writing into the directory."""


# ------------------------------------------------------------------------------------ permissions


def _umask() -> int:
    """The process umask (read from /proc on Linux; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(*, directory: bool) -> int:
    """The mode a plain ``open``/``mkdir`` would give: 0666 or 0777 minus the umask."""
    return (0o777 if directory else 0o666) & ~_umask()


# ------------------------------------------------------------------------------- ownership markers


def write_marker(
    directory: Path, kind: str, *, files: Sequence[str] | None = None, dirs: Sequence[str] = ()
) -> None:
    """Record in ``directory`` that hirm wrote it.

    ``files``: paths (relative, ``/``-separated) hirm wrote there; ``None`` = every file now present.
    ``dirs``: sub-directories (``""`` = the directory itself) whose sub-directories are each a
    marked hirm output of their own (e.g. a sweep's ``concepts/``).
    """
    from hirm._version import __version__

    if files is None:
        files = sorted(
            Path(root, name).relative_to(directory).as_posix()
            for root, _, names in os.walk(directory)
            for name in names
            if name not in (MARKER, LOCK)
        )
    marker = {
        "kind": kind,
        "hirm_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": list(files),
        "dirs": list(dirs),
    }
    (directory / MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")


def read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((Path(directory) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), list) else None


def foreign_entries(directory: str | os.PathLike) -> list[str]:
    """Paths inside ``directory`` that hirm did not write there ([] = all of it is hirm's).

    Without a marker every entry is foreign; with one, every file must be listed by it, and every
    sub-directory of its ``dirs`` must be a clean marked output itself. Symbolic links are foreign.
    """
    root = Path(directory)
    marker = read_marker(root)
    if marker is None:
        return sorted(p.name for p in root.iterdir() if p.name != LOCK)
    listed = set(marker["files"]) | {MARKER, LOCK}
    containers = set(marker.get("dirs", []))
    foreign: list[str] = []
    for current, subdirs, names in os.walk(root):
        rel = Path(current).relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        join = lambda name, rel=rel: f"{rel}/{name}" if rel else name  # noqa: E731
        foreign += [join(n) for n in names if join(n) not in listed or Path(current, n).is_symlink()]
        foreign += [join(d) for d in subdirs if Path(current, d).is_symlink()]
        subdirs[:] = [d for d in subdirs if not Path(current, d).is_symlink()]
        if rel in containers:
            for d in subdirs:
                foreign += [f"{join(d)}/{x}" for x in foreign_entries(Path(current, d))]
            subdirs[:] = []
    return sorted(foreign)


def owned_file(path: Path) -> bool:
    """Whether ``path`` is a file hirm wrote: a hirm patch, a hirm result JSON, or listed by the marker
    of its directory."""
    marker = read_marker(path.parent)
    if marker is not None and path.name in marker["files"]:
        return True
    if path.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                return str((handle.metadata() or {}).get("format", "")).startswith(OWNED_FORMATS)
        except Exception:  # not a safetensors file at all
            return False
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (
            isinstance(data, dict)
            and data.get("kind") in RESULT_KINDS
            and isinstance(data.get("meta"), dict)
            and "hirm_version" in data["meta"]
        )
    return False


def check_replaceable(path: Path) -> None:
    """Refuse to replace ``path`` unless hirm wrote all of it (``--overwrite`` never deletes user data)."""
    if path.is_symlink():
        raise OutputExistsError(
            f"{path} is a symbolic link; hirm does not replace links. Choose another path."
        )
    if path.is_dir():
        check_unlocked(path)
        foreign = foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputExistsError(
                f"{path} holds files hirm did not write ({shown}); --overwrite only replaces hirm's own "
                "outputs. Move them away or choose another path."
            )
    elif path.exists() and not owned_file(path):
        raise OutputExistsError(
            f"{path} was not written by hirm; --overwrite only replaces hirm's own outputs. Move it away "
            "or choose another path."
        )


# ------------------------------------------------------------------------------------------ writes


def check_writable(path: str | os.PathLike, *, overwrite: bool = False, directory: bool = False) -> Path:
    """Fail early, before any work, if ``path`` cannot be written: it exists (without ``overwrite``, or
    it is not hirm's to replace), it is a directory where a file is wanted (or the reverse), or its
    parent is not writable. ``directory``: the output is a directory."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        if path.is_dir() and not directory:
            raise OutputExistsError(
                f"{path} is a directory; give a file path for this output, e.g. {path / 'out.safetensors'}."
            )
        if directory and not path.is_dir():
            raise OutputExistsError(f"{path} is a file; this output is a directory: choose another path.")
        if not overwrite:
            raise OutputExistsError(
                f"{path} already exists; choose another path or pass overwrite=True (--overwrite)."
            )
        check_replaceable(path)
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"Cannot write {path}: {probe} is a file, not a directory.")
    if not os.access(probe, os.W_OK):
        raise PermissionError(f"Cannot write {path}: {probe} is not writable.")
    return path


def check_writable_or_exit(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """For scripts (the benchmarks): :func:`check_writable`, its refusal of an existing output as a
    one-line ``error: ...`` exit instead of a traceback."""
    try:
        return check_writable(path, overwrite=overwrite)
    except OutputExistsError as err:
        raise SystemExit(f"error: {err}") from None


def _disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, also when a library wraps it (safetensors: ``IoError(Os { code: 28 ...``)."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    if isinstance(err, OSError) and err.errno in codes:
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text or "code: 28," in text


@contextmanager
def atomic_path(
    path: str | os.PathLike, *, overwrite: bool = False, directory: bool = False, kind: str = "output"
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; on success it is renamed to ``path`` in one step.

    A directory gets a :data:`MARKER` (``kind``) listing what was written. On any error (including
    KeyboardInterrupt and, under the CLI, SIGTERM) the temporary file or directory is removed and
    ``path`` is left as it was. A previous output is replaced only when it is hirm's (see module doc).
    """
    path = check_writable(path, overwrite=overwrite, directory=directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if directory:
            write_marker(tmp, kind)
        os.chmod(tmp, default_mode(directory=directory))
        _replace(tmp, path, directory=directory)
    except Exception as err:
        _discard(tmp)
        if _disk_full(err):
            raise DiskFullError(
                f"No space left on the device while writing {path}; nothing was written. Free some space "
                "or choose another path."
            ) from None
        raise
    except BaseException:
        _discard(tmp)
        raise


def _replace(tmp: Path, path: Path, *, directory: bool) -> None:
    """Move ``tmp`` to ``path``; an existing (hirm-owned, checked again now) ``path`` is replaced."""
    if path.exists() or path.is_symlink():
        check_replaceable(path)
        if directory:
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, aside / path.name)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(aside / path.name, path)
                raise
            shutil.rmtree(aside, ignore_errors=True)
            return
    os.replace(tmp, path)


def _discard(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    elif tmp.exists():
        tmp.unlink()


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)
    return Path(path)


def append_line(path: Path, line: str) -> None:
    """Append one line (durably); if the file ends in a torn line, the new one still starts fresh."""
    with path.open("a+b") as handle:
        handle.seek(0, os.SEEK_END)
        fresh = b""
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            fresh = b"" if handle.read(1) == b"\n" else b"\n"
        handle.write(fresh + line.rstrip("\n").encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:  # hashlib.file_digest is Python >= 3.11; we support 3.10
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: Path, what: str = "") -> Any:
    """``json.loads`` of a file, with errors that name the file and the position."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}{f' ({what})' if what else ''} is not valid JSON: {err.msg} at line {err.lineno}, "
            f"column {err.colno}."
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}{f' ({what})' if what else ''} is not a UTF-8 text (JSON) file.") from None


# -------------------------------------------------------------------------------------------- locks


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def directory_lock(directory: str | os.PathLike, what: str = "hirm") -> Iterator[Path]:
    """Hold ``directory/.hirm-lock`` (created exclusively, with this process's pid and host) for the block.

    A lock held by a live process is a :class:`DirectoryLockedError` naming it; one left by a process
    that is gone (same host) is recovered. The lock file is removed on exit.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what}
    record["since"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, default_mode(directory=False))
        except FileExistsError:
            _break_stale(lock)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(record))
        break
    else:
        raise DirectoryLockedError(
            f"Could not take the lock {lock}; remove it if no hirm process uses {directory}."
        )
    try:
        yield lock
    finally:
        try:
            if json.loads(lock.read_text()).get("pid") == os.getpid():
                lock.unlink()
        except (OSError, ValueError):
            pass


def check_unlocked(directory: Path) -> None:
    """Raise :class:`DirectoryLockedError` if another live process holds ``directory``'s lock."""
    lock = directory / LOCK
    if not lock.exists():
        return
    try:
        holder = json.loads(lock.read_text())
    except (OSError, ValueError):
        holder = {}
    if holder.get("pid") != os.getpid():
        _break_stale(lock)


def _break_stale(lock: Path) -> None:
    """Remove ``lock`` if its holder is gone; raise :class:`DirectoryLockedError` if it is alive."""
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        holder = {}
    pid, host = holder.get("pid"), holder.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _alive(pid):
        stale = lock.with_name(f"{LOCK}.stale.{os.getpid()}")
        try:
            os.replace(lock, stale)
            stale.unlink()
        except FileNotFoundError:
            pass
        return
    if not isinstance(pid, int):  # half-written by a process killed right after creating it
        age = _dt.datetime.now().timestamp() - lock.stat().st_mtime
        if age > 60:
            lock.unlink(missing_ok=True)
            return
    raise DirectoryLockedError(
        f"{lock.parent} is in use by {holder.get('what', 'hirm')} (pid {pid} on {host}, since "
        f"{holder.get('since', '?')}); wait for it to finish, or stop it. If that process is gone, remove {lock}."
    )
