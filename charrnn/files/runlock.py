"""One writer per run: an exclusive OS lock on the run directory itself.

`RunLock(directory).acquire()` opens the run directory and takes
`fcntl.flock(LOCK_EX | LOCK_NB)` on it; while it is held, a second acquire
fails at once with a RunLockedError that names the holder. The lock is on the
directory, not on a file inside it, because a file can be deleted while its
lock is held (and a second trainer would then lock a new file of the same
name), whereas the directory stands as long as the run does. The kernel drops
a flock when its holder exits in any way, kill -9 included, so a lock is never
stale and nothing has to guess from a PID whether its owner still lives.

directory/train.lock is information only: the holder's process id and start
time, for the message a refused trainer prints. It is written after the lock is
taken, replaced whole by atomic.py (so a symbolic link planted there is
replaced, never written through), and removed on release; a killed holder
leaves it behind, harmlessly. acquire checks that the directory it locked is
still the one at the path (a fresh run's directory removed again by a failed
start, and made anew by another trainer, is locked again).

Where the filesystem cannot lock at all (flock fails with ENOLCK, EOPNOTSUPP
and the like: some network mounts), acquire refuses with a LockError; the
caller can choose to go on without a lock (`charrnn train --no-lock`).

Readers (sample, eval, info, plot) never take the lock: every file they read
is replaced whole by a rename, or (the log) only appended to.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from . import atomic
from ..errors import LockError, RunLockedError, option
from .layout import LOCK_FILE

# flock's answers on a filesystem that cannot lock (as opposed to a lock that is taken)
_CANNOT_LOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_HOLDER_WAIT = 1.0  # seconds to wait for a holder that has just locked to write who it is


class RunLock:
    """The exclusive lock on one run directory (which must exist); a context manager."""

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock, or raise RunLockedError (another process holds it) or LockError (cannot lock here)."""
        while True:
            fd = os.open(self.directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(f"{self.directory} is being trained by {self._holder()}; wait for it, "
                                     f"or train into another {option('out')}") from None
            except OSError as exc:
                os.close(fd)
                if exc.errno not in _CANNOT_LOCK:
                    raise
                raise LockError(f"cannot lock {self.directory}: the filesystem does not support locks "
                                f"({os.strerror(exc.errno)}); if no other trainer writes this run, "
                                f"give {option('lock', False)}") from None
            try:
                current = os.stat(self.directory)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                break
            os.close(fd)  # locked a directory that was removed (and perhaps made anew): lock the one there now
        self._fd = fd
        try:
            record = f"{os.getpid()} {time.time():.3f}\n".encode("ascii")
            atomic.write_file(self.path, lambda f: f.write(record))
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (removing first: nobody else can write it meanwhile)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> str:
        """'process N (started HH:MM:SS)' from the lock file of the process holding the lock, or 'another
        process' (the file is not written yet, or was removed)."""
        deadline = time.monotonic() + _HOLDER_WAIT
        while True:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                try:
                    data = os.read(fd, 64)
                finally:
                    os.close(fd)
                pid, started = data.decode("ascii").split()
                return f"process {int(pid)} (started {time.strftime('%H:%M:%S', time.localtime(float(started)))})"
            except (ValueError, UnicodeDecodeError, OSError):
                if time.monotonic() >= deadline:  # it locked but has not written yet, or wrote nonsense
                    return "another process"
                time.sleep(0.01)
