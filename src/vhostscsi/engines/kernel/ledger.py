"""What the kernel engine created in configfs, so it removes only its own objects.

configfs has no place to mark an object's owner, so the record lives beside it: a small JSON list
of configfs paths (relative to the target root). It goes in /run by default because configfs
itself does not survive a reboot either; a lost record only makes us leave objects alone, never
remove someone else's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vhostscsi.engines.kernel.configfs import KernelError, Op

DEFAULT_LEDGER = Path("/run/vhostscsi/kernel-owned.json")


class Ledger:
    """The set of configfs directories we created, kept in step with each completed operation."""

    def __init__(self, path: Path | None, owned: set[str] | None = None) -> None:
        self.path = path
        self.owned: set[str] = set(owned or ())

    @classmethod
    def load(cls, path: Path) -> Ledger:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise KernelError(f"cannot read the record of our configfs objects {path}: {exc}; "
                              "delete it to start over (objects already created are then left alone)") from None
        if not isinstance(data, dict) or not isinstance(data.get("owned"), list):
            raise KernelError(f"{path} is not a vhostscsi kernel record; delete it to start over")
        return cls(path, {str(item) for item in data["owned"]})

    def owns(self, rel: str) -> bool:
        return rel in self.owned

    def record(self, op: Op) -> None:
        """Follow one completed operation: a made directory becomes ours, a removed one stops being."""
        if op.kind == "mkdir":
            self.owned.add(op.path)
        elif op.kind == "rmdir":
            prefix = op.path + "/"
            self.owned = {p for p in self.owned if p != op.path and not p.startswith(prefix)}

    def save(self) -> None:
        """Atomic replace, so a crash never leaves a half-written record."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"owned": sorted(self.owned)}, indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise KernelError(f"cannot save the record of our configfs objects to {self.path}: "
                              f"{exc.strerror}; name a writable file with --ledger") from None
