"""Summarize py-spy's raw (collapsed) stacks: where the daemon's samples go, by function.

Each line of `py-spy record --format raw` is `frame;frame;...;leaf count`, a frame being `func (file:line)`.
"Self" counts samples whose leaf is the function (the time spent in its own bytecode and the C it calls);
"total" counts samples with the function anywhere on the stack (once per stack).
"""

from __future__ import annotations

import re
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _name(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = re.sub(r"^.*/lib/python3\.\d+/", "", m["file"])
    path = re.sub(r"^(.*/)?vhostscsi/", "", path)
    return f"{m['func']} ({path})"


# Leaves where the daemon waits for work: py-spy's non-blocking sampling cannot always tell that a thread sits in
# epoll_wait, so these are counted as idle and left out of the percentages.
IDLE_LEAVES = ("EpollSelector.select", "select (selectors", "BaseSelector.select")


def summarize(raw: str, top: int = 25) -> dict[str, object]:
    own: Counter[str] = Counter()
    own_lines: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = idle = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1].startswith(IDLE_LEAVES):
            idle += n
            continue
        samples += n
        own[frames[-1]] += n
        leaf = stack.split(";")[-1].strip()
        m = _FRAME.match(leaf)
        line_no = leaf.rsplit(":", 1)[-1].rstrip(")") if m and ":" in leaf else "?"
        own_lines[f"{frames[-1].rsplit(' (', 1)[0]} ({frames[-1].rsplit(' (', 1)[-1].rstrip(')')}:{line_no})"] += n
        for f in set(frames):
            total[f] += n
    if not samples:
        return {"samples": 0, "idle_samples": idle, "self": [], "inclusive": [], "lines": [],
                "text": f"daemon profile: no busy samples ({idle} idle)"}
    lines = [f"daemon profile (py-spy, {samples} busy samples = 100%; {idle} more waiting in epoll left out):",
             f"{'self%':>6} {'total%':>6}  function"]
    rows = []
    for func, n in own.most_common(top):
        rows.append({"function": func, "self_pct": round(100 * n / samples, 1),
                     "total_pct": round(100 * total[func] / samples, 1)})
        lines.append(f"{100 * n / samples:6.1f} {100 * total[func] / samples:6.1f}  {func}")
    lines.append(f"{'':>6} {'total%':>6}  (inclusive, top {top // 2})")
    inclusive = []
    for func, n in total.most_common(top // 2):
        inclusive.append({"function": func, "total_pct": round(100 * n / samples, 1)})
        lines.append(f"{'':>6} {100 * n / samples:6.1f}  {func}")
    lines.append(f"{'self%':>6} {'':>6}  hottest lines")
    hot = []
    for where, n in own_lines.most_common(max(5, top // 2)):
        hot.append({"line": where, "self_pct": round(100 * n / samples, 1)})
        lines.append(f"{100 * n / samples:6.1f} {'':>6}  {where}")
    return {"samples": samples, "idle_samples": idle, "self": rows, "inclusive": inclusive, "lines": hot, "text": "\n".join(lines)}
