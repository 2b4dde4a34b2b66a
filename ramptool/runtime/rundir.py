"""Output folders: checked before any work, used by one process at a time, replaced without losing the old run.

- ``prepare_folder`` makes sure ``--out`` is (or can become) a writable folder, so a typo costs nothing.
- ``FolderLock`` holds an exclusive ``fcntl`` lock on ``OUT/.ramptool.lock`` (which records the owner's pid)
  for as long as a command works in the folder; a second process gets one line naming the owner.
- ``set_aside`` / ``restore_set_aside`` / ``discard_set_aside``: ``--overwrite`` moves the old run's files
  into ``OUT/.previous-run/`` and deletes them only once the new run has its first checkpoint; if the new run
  fails first they are put back, and if it was killed, the next command in the folder puts them back.
- ``safe_name`` turns a user-given name (a checkpoint's folder name, ...) into one path component, so a path
  built from it stays inside OUT.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import sys
from pathlib import Path

from ramptool.errors import RamptoolError

LOCK_FILE = ".ramptool.lock"
SET_ASIDE = ".previous-run"


def prepare_folder(folder, flag: str = "--out") -> Path:
    """Create ``folder`` if needed and check that files can be written there."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RamptoolError(f"{flag} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RamptoolError(f"{flag} {folder}: a parent of it is a file, not a folder") from None
    except OSError as error:
        raise RamptoolError(f"{flag} {folder} cannot be created: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RamptoolError(f"{flag} {folder} is not writable")
    return folder


class FolderLock:
    """Exclusive use of a folder while a command works in it. Released by ``release`` or when the process ends
    (the kernel drops ``flock`` locks of a dead process, so a crash never leaves a stale lock)."""

    def __init__(self, folder, flag: str = "--out"):
        self.folder, self.flag, self.fd = prepare_folder(folder, flag), flag, None

    def acquire(self) -> FolderLock:
        path = self.folder / LOCK_FILE
        try:  # never through a symlink: it would make the lock truncate whatever file it points to
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise RamptoolError(f"{path} is a symbolic link; ramptool writes nothing through a link inside "
                                    f"{self.flag}: remove it") from None
            raise RamptoolError(f"{self.flag} {self.folder} is not writable: {error.strerror or error}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RamptoolError(f"{self.folder} is in use by another ramptool process (pid {owner}); wait for it "
                                f"to finish, or choose another {self.flag}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_links(folder, names, flag: str = "--out") -> None:
    """One line for a name under ``folder`` that is a symbolic link: what ramptool writes there would land
    wherever the link points, outside ``flag``."""
    for name in names:
        path = Path(folder) / name
        if path.is_symlink():
            raise RamptoolError(f"{path} is a symbolic link; ramptool writes nothing through a link inside {flag}: "
                                f"remove it or choose another {flag}")


def is_writer() -> bool:
    """Whether this process writes output folders: a plain process, or rank 0 under torchrun (read from torchrun's
    environment: the process group may not be joined yet). The other ranks compute and neither write nor lock."""
    return int(os.environ.get("RANK", "0")) == 0


def writer_lock(folder, flag: str = "--out"):
    """``FolderLock(folder)`` for the writing process, a no-op context for the others."""
    return FolderLock(folder, flag) if is_writer() else contextlib.nullcontext()


def set_aside(folder: Path, names) -> bool:
    """Move the files ``names`` that exist in ``folder`` into ``folder/.previous-run``; whether any did."""
    present = [name for name in names if (folder / name).exists()]
    if not present:
        return False
    aside = folder / SET_ASIDE
    aside.mkdir(exist_ok=True)
    for name in present:
        os.replace(folder / name, aside / name)
    return True


def restore_set_aside(folder: Path) -> None:
    """Put the set-aside files back (over whatever the new run left) and remove the set-aside folder."""
    aside = folder / SET_ASIDE
    for path in aside.iterdir():
        os.replace(path, folder / path.name)
    aside.rmdir()


def discard_set_aside(folder: Path) -> None:
    shutil.rmtree(folder / SET_ASIDE, ignore_errors=True)


def recover_set_aside(folder: Path, checkpoint_names) -> None:
    """After a run that was replacing an old one got killed: if it never wrote a checkpoint, the old run comes
    back; if it did, the old run's files go."""
    if not (folder / SET_ASIDE).is_dir():
        return
    if any((folder / name).exists() for name in checkpoint_names):
        discard_set_aside(folder)
        return
    restore_set_aside(folder)
    print(f"note: restored the run in {folder} that an interrupted --overwrite had set aside", file=sys.stderr)


def safe_name(text: str, fallback: str = "model") -> str:
    """One harmless path component: letters, digits, '.', '_' and '-' only, not starting with a dot."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", text).lstrip(".-")
    return name or fallback

