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
    path = m["file"]
    for marker in ("/vhostscsi/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m['func']} ({path})"


def summarize(raw: str, top: int = 25) -> dict[str, object]:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    lines = [f"daemon profile (py-spy, {samples} samples of busy time):",
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
    return {"samples": samples, "self": rows, "inclusive": inclusive, "text": "\n".join(lines)}
