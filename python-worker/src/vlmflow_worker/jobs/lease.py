"""One owner per job across hosts: a lease file in the job folder on the shared artifact store.

`owner.json` names the worker process that runs the job (host, pid, a random token). The owner rewrites it every
`lease_s / 3` seconds; a worker that finds a job folder with a lease decides whether its owner lives:

- on the same host (same kernel boot and pid namespace), by its pid (dead pid, dead owner: at once);
- on another host, by watching the file: if its content and mtime stay the same for `lease_s` seconds of this
  host's own monotonic clock, the owner is gone. No clock is compared across hosts, so clock skew does not matter.

Taking a free lease is an exclusive create (O_CREAT | O_EXCL); taking a dead owner's lease first renames the stale
file aside (of two hosts racing, one rename succeeds) and then creates. An owner whose renewal finds the lease gone
or someone else's stops its job: at most one training goes on, even after a long stall of the store.

What the shared file system must give (NFSv3+, CephFS, EFS, local disks do): atomic rename and exclusive create
within a folder, and a write visible to other hosts within `lease_s / 3` (close-to-open consistency).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

LEASE = "owner.json"


def _place() -> str:
    """Where this worker's pids mean something: one kernel boot (host names repeat across containers and hosts)
    and one pid namespace. VLMFLOW_WORKER_HOST_ID overrides it, so workers on one machine can act as hosts apart."""
    if os.environ.get("VLMFLOW_WORKER_HOST_ID"):
        return os.environ["VLMFLOW_WORKER_HOST_ID"]
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return f"{socket.gethostname()}:{uuid.uuid4().hex}"  # no /proc: never treat another worker as local
    return f"{boot}:{namespace}"


_TOKEN = uuid.uuid4().hex[:12]
_PLACE = {"place": _place()}


def me() -> dict[str, str | int]:
    """This worker process as a lease owner (the host name is for people reading the file)."""
    return {**_PLACE, "host": socket.gethostname(), "pid": os.getpid(), "token": _TOKEN}


def read(folder: Path) -> tuple[dict | None, tuple[int, int] | None]:
    """The lease's owner and a signature of the file (mtime, size), or (None, None) when there is no lease."""
    path = folder / LEASE
    try:
        text = path.read_text()
        stat = path.stat()
    except FileNotFoundError:
        return None, None
    try:
        owner = json.loads(text)
    except ValueError:
        owner = {}  # a torn write by a dying owner: no owner can be named, only watched
    return owner, (stat.st_mtime_ns, stat.st_size)


def is_mine(owner: dict | None) -> bool:
    return bool(owner) and owner.get("token") == _TOKEN and owner.get("pid") == os.getpid()


def take(folder: Path) -> bool:
    """Creates the lease for this worker; False when one exists."""
    try:
        fd = os.open(folder / LEASE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump({**me(), "renewed": time.time()}, f)
        f.flush()
        os.fsync(f.fileno())
    return True


def renew(folder: Path) -> bool:
    """Rewrites this worker's lease in place (the mtime moves); False when it is gone or someone else's."""
    owner, _ = read(folder)
    if not is_mine(owner):
        return False
    with open(folder / LEASE, "r+") as f:
        f.seek(0)
        f.write(json.dumps({**me(), "renewed": time.time()}))
        f.truncate()
        f.flush()
        os.fsync(f.fileno())
    return True


def release(folder: Path) -> None:
    """Removes the lease if this worker holds it."""
    owner, _ = read(folder)
    if is_mine(owner):
        (folder / LEASE).unlink(missing_ok=True)


def break_stale(folder: Path) -> bool:
    """Moves a dead owner's lease aside; True for the one host whose rename won."""
    try:
        os.rename(folder / LEASE, folder / f"{LEASE}.stale-{uuid.uuid4().hex[:8]}")
    except FileNotFoundError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: its job process died with it
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class Watch:
    """What this host has seen of one lease: whether its owner lives."""

    lease_s: float
    signature: tuple[int, int] | None = None
    since: float = field(default_factory=time.monotonic)

    def owner_alive(self, folder: Path) -> bool:
        """False when there is no lease or its owner is gone. Another host's owner counts as alive until its lease
        has stayed unchanged for lease_s seconds of watching."""
        owner, signature = read(folder)
        if signature is None:
            return False
        if owner and all(owner.get(k) == v for k, v in _PLACE.items()):
            return is_mine(owner) or pid_alive(int(owner.get("pid", 0)))
        now = time.monotonic()
        if signature != self.signature:
            self.signature, self.since = signature, now
        return now - self.since < self.lease_s
