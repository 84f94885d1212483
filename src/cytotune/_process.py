"""Is a process still alive? One answer for every writer that names its files or leases after
its process (run staging folders, cache temporary files, store leases), so they all agree on
when a dead writer's leftovers may be removed or its work taken over."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host. A process of another user counts as alive; a
    zombie (killed but not yet reaped by its parent, which still answers ``kill(pid, 0)``) counts
    as dead; when unsure, alive (its files are kept)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process; anything else: unsure
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False
