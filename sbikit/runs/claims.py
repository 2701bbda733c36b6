r"""Which process runs which cell of a store, so that processes resuming one store share it.

A process creates ``claims/<cell>.claim`` exclusively (``O_EXCL``) before it runs a
cell, writes its owner (host, pid and a random token) into it, touches it while it
runs, and removes it once the cell's shard is in place. A claim not touched for
``ttl`` seconds, or held by a process of this host that no longer runs, is taken
over: the taker renames it away (one rename wins) and claims afresh.
"""

__all__ = ["Claims"]

import os
import platform
import threading
import time
import uuid

from pathlib import Path


class Claims:
    r"""The claims of one store.

    Arguments:
        directory: The store's ``claims/`` directory.
        ttl: Seconds after which a claim that is not refreshed is taken over.
    """

    def __init__(self, directory: Path, ttl: float) -> None:
        self.directory, self.ttl = Path(directory), ttl
        self.owner = f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._claims: set[Path] = set()
        self._lock = threading.Lock()

    def _path(self, cell: int) -> Path:
        return self.directory / f"{cell:012d}.claim"

    def live(self) -> list[int]:
        r"""The cells that a live process holds."""

        now = time.time()
        out = []
        for entry in os.scandir(self.directory):
            if entry.name.endswith(".claim"):
                try:
                    if now - entry.stat().st_mtime < self.ttl and not self._dead_owner(Path(entry.path)):
                        out.append(int(entry.name.split(".")[0]))
                except FileNotFoundError:
                    pass
        return out

    def claim(self, cell: int) -> bool:
        r"""Claims the cell starting at index ``cell``; a claim older than ``ttl``, or of a dead process here, is taken over."""

        path = self._path(cell)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < self.ttl and not self._dead_owner(path):
                    return False
                # a dead claimer's: one process wins the rename, and claims afresh
                try:
                    os.replace(path, path.with_name(f"{path.name}.stale.{uuid.uuid4().hex[:8]}"))
                except FileNotFoundError:
                    return False
                for stale in path.parent.glob(f"{path.name}.stale.*"):
                    stale.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as file:
                file.write(self.owner + "\n")
            with self._lock:
                self._claims.add(path)
            return True
        return False

    @staticmethod
    def _dead_owner(path: Path) -> bool:
        r"""Whether a claim belongs to a process of this host that no longer runs (a killed driver)."""

        try:
            host, pid, _ = path.read_text().strip().split(":")
        except (FileNotFoundError, ValueError):
            return False
        if host != platform.node():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError):
            return False
        return False

    def release(self, cell: int) -> None:
        path = self._path(cell)
        with self._lock:
            self._claims.discard(path)
        try:
            if path.read_text().strip() == self.owner:
                path.unlink()
        except FileNotFoundError:
            pass

    def refresh(self) -> None:
        r"""Touches this process's claims, so that others see them alive."""

        with self._lock:
            claims = list(self._claims)
        for path in claims:
            try:
                os.utime(path)
            except FileNotFoundError:
                pass

    def release_all(self) -> None:
        with self._lock:
            claims = list(self._claims)
        for path in claims:
            self.release(int(path.stem))
