"""One run per folder: a lock held for the run's life, so a second run with the same ``--out``/``--name``
refuses at start instead of interleaving its files with the first's.

The lock is an advisory ``flock`` on ``FOLDER/.lock``: the operating system releases it when its process
ends in any way (a crash, SIGKILL, a lost node), so a dead run's lock is taken over without a stale-file
check. The file says who holds it (pid, host, start time, command), which the refusal names; a run that
ends removes it.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from semivit.errors import SemivitError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks here; runs are then not guarded against each other
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """``with RunLock(folder): ...`` — the folder is this process's until the block ends.

    Examples:
        >>> import tempfile
        >>> with RunLock(Path(tempfile.mkdtemp())) as lock:
        ...     lock.held
        True
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        try:
            self._acquire()
        except OSError as e:  # a folder that cannot be created or written
            raise SemivitError(f"cannot write to the run folder '{self.path.parent}' ({e.strerror or e}): choose a "
                               f"writable --out") from None
        return self

    def _acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise SemivitError(f"the run folder '{self.path.parent}' is in use by another run ({holder}): "
                                   f"wait for it to end, or choose another --name or --out") from None
            try:  # the holder removes the file before it unlocks: locked a removed file? take the new one
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        command = " ".join(sys.argv)[:300]
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {command}\n".encode())
        self._fd = fd

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # while still locked: the folder is left as the run wrote it
            fcntl.flock(self._fd, fcntl.LOCK_UN)  # type: ignore[union-attr]
            os.close(self._fd)
            self._fd = None
