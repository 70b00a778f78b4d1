"""Claims: which worker is estimating which checkpoint, so that ``estimate_all`` is crash-proof
and can be shared by many workers on one results folder.

A claim is a small JSON file ``<results>/<settings-hash>/.claims/<record stem>.claim`` holding the
worker's host, pid, a unique worker id and a heartbeat (docs/formats.md, Claims). A worker
creates it before it estimates a checkpoint (or one scope of it) and removes it once the record
is written; while it works, a background thread rewrites the heartbeat. So

* two workers, on one machine or on many sharing a filesystem, never estimate the same record at
  the same time: a claim is created exclusively, as a hard link of a complete temporary file
  (``os.link`` fails when the claim exists), which holds on NFS and other cluster filesystems;
* a crashed worker blocks nothing for long: a claim whose heartbeat is older than the timeout,
  or whose process is gone from this host, is stale and is taken over (or swept away);
* a ``kill -9`` at any moment leaves at worst a stale claim, never a half-written one: every
  claim file is written completely (``llcv.fileio``) before it is linked or renamed into place.

``filelock`` only serialises the rarer takeover, heartbeat and release, where a filesystem without
working ``flock`` costs at most a duplicated estimate, never a corrupt file. Ctrl-C and SIGTERM
release the claims on the way out (``Claims`` is a context manager).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from llcv.fileio import WriteError, atomic_write_text, write_temporary

logger = logging.getLogger("llcv")

HEARTBEAT_MAX_INTERVAL = 60.0  # seconds; a heartbeat every timeout/5, at least this often


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


@dataclass(frozen=True)
class WorkerIdentity:
    """Who holds a claim: the host, the process, and a unique id per ``estimate_all`` call."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    worker: str = field(default_factory=lambda: uuid.uuid4().hex)


class Claims:
    """This worker's claims in one results folder, kept alive by a heartbeat thread.

    Use as a context manager: leaving it (normally, by an exception, Ctrl-C or SIGTERM) stops
    the heartbeat and releases every claim still held.
    """

    def __init__(self, folder: Path, timeout_seconds: float, identity: WorkerIdentity | None = None):
        self.folder = Path(folder)
        self.timeout = float(timeout_seconds)
        self.identity = identity or WorkerIdentity()
        self.held: set[str] = set()
        self._mutex = threading.Lock()  # the heartbeat thread and the main thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # paths
    def path(self, key: str) -> Path:
        return self.folder / f"{key}.claim"

    def _lock(self, key: str) -> FileLock:
        # one lock for the folder: it guards only takeovers, heartbeats and releases, each a few ms
        return FileLock(self.folder / "claims.lock", timeout=min(30.0, max(self.timeout / 2, 1.0)))

    # lifecycle
    def __enter__(self) -> "Claims":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.sweep()
        interval = min(self.timeout / 5, HEARTBEAT_MAX_INTERVAL)
        self._thread = threading.Thread(target=self._beat, args=(interval,), name="llcv-claims-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for key in list(self.held):
            try:
                self.release(key)
            except OSError as error:  # a claim left behind is taken over later; never mask the real exit
                logger.warning("could not release claim %s: %s", self.path(key), error)
        # An interrupt between writing a claim's temporary file and renaming it can leave the file.
        for leftover in self.folder.glob(f".*.{self.identity.worker}.*.tmp"):
            leftover.unlink(missing_ok=True)

    # the claim file
    def _payload(self, key: str, claimed: float | None = None) -> dict[str, Any]:
        now = time.time()
        return {
            "key": key,
            "host": self.identity.host,
            "pid": self.identity.pid,
            "worker": self.identity.worker,
            "claimed": claimed if claimed is not None else now,
            "heartbeat": now,
        }

    def _temporary(self, key: str, payload: dict[str, Any]) -> Path:
        """A complete temporary claim file, named after this worker so ``close`` can find it if an
        interrupt leaves it; raises OSError (and leaves no file) when it cannot be written."""
        data = json.dumps(payload).encode("utf-8")
        return write_temporary(self.folder, f".{key}.{self.identity.worker}.", lambda handle: handle.write(data))

    def read(self, key: str) -> dict[str, Any] | None:
        """The claim on ``key``: a dict, ``{}`` when the file exists but cannot be parsed, None when absent."""
        try:
            payload = json.loads(self.path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return payload if isinstance(payload, dict) else {}

    def is_stale(self, claim: dict[str, Any]) -> bool:
        """A claim is stale when its heartbeat is older than the timeout, or its process died on this host."""
        heartbeat = claim.get("heartbeat")
        if not isinstance(heartbeat, (int, float)):
            try:
                heartbeat = self.path(str(claim.get("key", ""))).stat().st_mtime
            except OSError:
                return True
        if time.time() - heartbeat > self.timeout:
            return True
        same_host = claim.get("host") == self.identity.host
        return same_host and isinstance(claim.get("pid"), int) and not _pid_alive(claim["pid"])

    def try_claim(self, key: str) -> bool:
        """Claim ``key`` if no live worker holds it; True when this worker now holds it.

        Raises:
            WriteError: the claim could not be written (a full or read-only disk).
        """
        try:
            temporary = self._temporary(key, self._payload(key))
        except OSError as error:
            raise WriteError(f"could not claim {key}: writing in {self.folder} failed: {error.strerror or error}") from None
        try:
            try:
                os.link(temporary, self.path(key))  # exclusive: fails if any claim exists
                with self._mutex:
                    self.held.add(key)
                return True
            except FileExistsError:
                pass
            current = self.read(key)
            if current is None:  # released in between: try once more
                try:
                    os.link(temporary, self.path(key))
                    with self._mutex:
                        self.held.add(key)
                    return True
                except FileExistsError:
                    return False
            if not current:
                current = {"key": key}  # unparseable: judged by the file's age
            if current.get("worker") == self.identity.worker:
                with self._mutex:
                    self.held.add(key)
                return True
            if not self.is_stale(current):
                return False
            return self._take_over(key, current, temporary)
        finally:
            temporary.unlink(missing_ok=True)

    def _take_over(self, key: str, stale: dict[str, Any], temporary: Path) -> bool:
        try:
            with self._lock(key):
                now = self.read(key) or {}
                if now.get("worker") != stale.get("worker") or now.get("heartbeat") != stale.get("heartbeat"):
                    return False  # someone else took it over, or its owner came back to life
                os.replace(temporary, self.path(key))
        except (Timeout, OSError) as error:
            logger.info("could not take over the stale claim %s: %s", self.path(key), error)
            return False
        held = (self.read(key) or {}).get("worker") == self.identity.worker
        if held:
            logger.info("took over the stale claim on %s (was %s pid %s)", key, stale.get("host"), stale.get("pid"))
            with self._mutex:
                self.held.add(key)
        return held

    def sweep(self) -> int:
        """Remove the stale claims of dead workers (say, on checkpoints they finished just before a
        ``kill -9``); returns how many were removed."""
        removed = 0
        for path in self.folder.glob("*.claim"):
            key = path.name[: -len(".claim")]
            stale = self.read(key)
            if stale is None or stale.get("worker") == self.identity.worker or not self.is_stale({"key": key, **stale}):
                continue
            try:
                with self._lock(key):
                    now = self.read(key) or {}
                    if now.get("worker") == stale.get("worker") and now.get("heartbeat") == stale.get("heartbeat"):
                        path.unlink(missing_ok=True)
                        removed += 1
            except (Timeout, OSError) as error:
                logger.info("could not remove the stale claim %s: %s", path, error)
        return removed

    def refresh(self, key: str) -> bool:
        """Renew the heartbeat of a held claim; False (and the claim dropped) if another worker took it."""
        try:
            with self._lock(key):
                current = self.read(key) or {}
                if current.get("worker") != self.identity.worker:
                    logger.warning("lost the claim on %s to %s pid %s", key, current.get("host"), current.get("pid"))
                    with self._mutex:
                        self.held.discard(key)
                    return False
                atomic_write_text(self.path(key), json.dumps(self._payload(key, claimed=current.get("claimed"))))
        except (Timeout, OSError, WriteError) as error:
            logger.info("heartbeat of %s skipped: %s", self.path(key), error)
        return True

    def release(self, key: str) -> None:
        """Remove this worker's claim on ``key`` (a claim taken over by another worker is left alone).

        The key stays in ``held`` until the file is gone, so an interrupt in here leaves it for
        ``close`` to release.
        """
        lock = self._lock(key)
        try:
            lock.acquire()
        except (Timeout, OSError):
            lock = None
        try:
            if (self.read(key) or {}).get("worker") == self.identity.worker:
                self.path(key).unlink(missing_ok=True)
        finally:
            if lock is not None:
                lock.release()
        with self._mutex:
            self.held.discard(key)

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._mutex:
                keys = list(self.held)
            for key in keys:
                if self._stop.is_set():
                    return
                try:
                    self.refresh(key)
                except Exception as error:  # noqa: BLE001 - the heartbeat must outlive one bad write
                    logger.warning("heartbeat of claim %s failed: %s", key, error)

