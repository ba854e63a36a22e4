"""The processes a test's own job started, found through /proc: a kill must land in this test's Ray, never in
another's (two tests, or a test and a user's job, may run Ray on one machine at once)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `root`: the train workers of this test's own Ray only."""
    parent, cmd = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd[int(d)] = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        for child, par in parent.items():
            if par == p:
                out.append((child, cmd.get(child, "")))
                todo.append(child)
    return out


def kill_below(root: int, pattern: str) -> int:
    """SIGKILL every process below ``root`` whose command line matches the regex ``pattern``; how many there were."""
    found = [pid for pid, cmd in descendants(root) if re.search(pattern, cmd)]
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(found)
