"""Atomic file writes, and the one way charrnn opens a file for writing (`open_fd`).

A reader sees a file's old contents or its new ones, never a torn file.

Each file is written in full to a hidden temp file beside its target
(".NAME.RANDOM.tmp"), fsynced, and only then renamed over the target; the
directory is fsynced after the rename. Temp files are created with mode 0o666
so that the umask decides the permissions, as for any other new file (mkstemp
would make them 0600). cleanup_temp_files removes what a killed writer left.

Failures are OSError whose filename is the target (not the temp file), so the
caller can say which file could not be written; errors raised by a caller's
write function pass through unchanged. Either way the temp files are gone and
every target is as it was.

`open_fd` is the one place a file is opened for writing, by these writes and by
the run directory's files that are not replaced whole (log.jsonl, appended to):
it never follows a symbolic link (O_NOFOLLOW) and opens only a regular file, so
a link planted in a run directory (train.lock -> ~/victim.txt) is refused
instead of written through. An atomic write replaces such a link at its target
with a new file (the rename replaces the link itself) and never touches what it
pointed to.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import Callable, Iterable


class _Out:
    """The write-only binary file handed to a write function; every byte goes through os.write."""

    def __init__(self, fd: int):
        self._fd = fd

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        while view.nbytes:
            view = view[os.write(self._fd, view):]
        return memoryview(data).nbytes

    def flush(self) -> None:
        pass


# what open(O_NOFOLLOW) answers for a symbolic link: ELOOP on Linux and POSIX, EMLINK on FreeBSD,
# EFTYPE on NetBSD
_LINK_ERRNOS = {errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", errno.ELOOP)}


def open_fd(path, flags: int, mode: int = 0o666) -> int:
    """Open path for writing (a file descriptor), never through a symbolic link and only as a regular file.

    - flags: os.O_WRONLY or os.O_RDWR with any of O_CREAT, O_EXCL, O_APPEND (O_NOFOLLOW and
      O_CLOEXEC are added)
    - mode: the new file's permissions before the umask (0o666: the umask decides, as for any file)
    OSError whose filename is path: ELOOP "a symbolic link, which charrnn never writes through"
    when path is one, EINVAL "not a regular file" for a directory, FIFO or device (opened
    without blocking, so a FIFO with no reader does not hang the caller).
    """
    path = os.fspath(path)
    flags |= os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0) | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS and os.path.islink(path):
            raise OSError(errno.ELOOP, "a symbolic link, which charrnn never writes through", path) from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO with no reader; a directory
            raise OSError(errno.EINVAL, "not a regular file", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _retarget(exc: OSError, path: str) -> OSError:
    return OSError(exc.errno, exc.strerror or str(exc) or type(exc).__name__, path)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _stage(path: str, write: Callable) -> str:
    """Write one temp file beside path with write(file), fsynced; returns its path."""
    directory, base = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise _retarget(exc, path) from None
    try:
        try:
            write(_Out(fd))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise _retarget(exc, path) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _fsync_directory(directory: str) -> None:
    if os.name == "nt":  # directories cannot be opened for fsync there
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems do not support fsync on a directory; the rename still happened.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def write_files(files: Iterable[tuple]) -> None:
    """Write several files so that a failed write changes none of them.

    - files: (path, write) pairs; write(f) writes the file's bytes to the binary file f
    Every file is written in full and fsynced before the first rename; the
    renames follow in order, then each directory is fsynced. A crash between two
    renames leaves the earlier targets new and the later ones old, each whole.
    """
    files = [(os.fspath(path), write) for path, write in files]
    staged = []  # (temp path, target path)
    try:
        for path, write in files:
            staged.append((_stage(path, write), path))
        while staged:
            tmp, path = staged[0]
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _retarget(exc, path) from None
            staged.pop(0)
        for directory in sorted({os.path.dirname(os.path.abspath(path)) for path, _ in files}):
            try:
                _fsync_directory(directory)
            except OSError as exc:
                raise _retarget(exc, directory) from None
    finally:
        for tmp, _ in staged:
            _unlink_quietly(tmp)


def write_file(path, write: Callable) -> None:
    """Write one file atomically; write(f) writes its bytes to the binary file f."""
    write_files([(path, write)])


def cleanup_temp_files(directory) -> list[str]:
    """Remove temp files (".*.tmp") left in a directory by an interrupted write.

    Call it before writing starts (it would also remove a concurrent writer's temp file).
    - directory: a missing one holds nothing to clean
    Output: sorted names of the files removed. OSError when the directory cannot be listed
    or a file cannot be removed.
    """
    directory = os.fspath(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    return sorted(removed)
