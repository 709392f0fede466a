"""One writer per run: an exclusive OS lock on a file inside the run directory.

`RunLock(directory).acquire()` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on
directory/train.lock and writes the holder's process id and start time into
it; while it is held, a second acquire fails at once with a RunLockedError
that names the holder. The kernel drops a flock when its holder exits in any
way, kill -9 included, so a lock is never stale and nothing has to guess
from a PID whether its owner still lives: the PID is there only for the
message. `release` removes the file while still holding it, so a finished
run holds no lock file; acquire checks that the file it locked is still the
one at the path, so a taker that opened the old file just before it was
removed tries again instead of holding a lock nobody else can see.

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

from .errors import LockError, RunLockedError
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
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise RunLockedError(f"{self.directory} is being trained by {holder}; wait for it, "
                                     f"or train into another --out") from None
            except OSError as exc:
                os.close(fd)
                if exc.errno not in _CANNOT_LOCK:
                    raise
                try:  # nobody can hold a lock here, so the file is ours to remove
                    os.unlink(self.path)
                except OSError:
                    pass
                raise LockError(f"cannot lock {self.directory}: the filesystem does not support locks "
                                f"({os.strerror(exc.errno)}); if no other trainer writes this run, "
                                f"give --no-lock") from None
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is not None and os.path.samestat(current, os.fstat(fd)):
                break
            os.close(fd)  # locked a file its holder removed on release: lock the one at the path now
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.time():.3f}\n".encode("ascii"))
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (removing first: nobody else can hold it meanwhile)."""
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


def _holder(fd: int) -> str:
    """'process N (started HH:MM:SS)' from a lock file another process holds, or 'another process'."""
    deadline = time.monotonic() + _HOLDER_WAIT
    while True:
        try:
            pid, started = os.pread(fd, 64, 0).decode("ascii").split()
            return f"process {int(pid)} (started {time.strftime('%H:%M:%S', time.localtime(float(started)))})"
        except (ValueError, UnicodeDecodeError, OSError):
            if time.monotonic() >= deadline:  # it locked but has not written yet, or wrote nonsense
                return "another process"
            time.sleep(0.01)
