"""Files that survive a crash: every write goes to a temporary file in the same folder, is flushed to disk
and renamed over its target, so a kill never leaves a half-written file; the temporary file of a process that
died is removed by the next write to the same target.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path, flags=os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_orphans(folder: Path, name: str = "") -> None:
    """Delete the temporary files that writers of ``folder/name*`` left when they died (``.NAME.PID.XXXX.tmp``
    whose PID is no longer running); a live writer's file is never touched."""
    for tmp in Path(folder).glob(f".{glob.escape(name)}*.tmp"):
        pid = tmp.name[:-len(".tmp")].split(".")[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)``, flush the file to disk, then rename it onto ``path``: readers see the old file or
    the whole new one. The file gets the usual permissions (0666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphans(path.parent, path.name)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)  # the rename itself survives a power cut
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
