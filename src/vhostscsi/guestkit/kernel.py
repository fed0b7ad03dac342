"""Finding a bootable kernel and the module files (with dependencies, in load order) it needs.

Debian's cloud kernel is preferred: it boots fastest under TCG and carries the target modules
(target_core_*, tcm_loop, vhost_scsi). Load order comes from modules.dep (a depth-first walk,
dependencies first), so callers name only what they want, not what it needs.
"""

from __future__ import annotations

import glob
import gzip
import lzma
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Kernel", "GuestkitError", "MissingHostPart", "find_kernel", "resolve_modules", "module_bytes"]


class GuestkitError(RuntimeError):
    """A guest image cannot be built or booted; the message says what and where."""


class MissingHostPart(GuestkitError):
    """A program or kernel this host has not installed (the fix is a package).

    Kept apart from other GuestkitErrors so that tests skip only when the machine lacks a part, and
    fail when the image builder itself is wrong (a module that cannot be resolved, ldd failing, ...).
    """


@dataclass(frozen=True)
class Kernel:
    """A kernel image and the modules tree that matches it."""

    vmlinuz: Path
    version: str
    modules_root: Path = Path("/lib/modules")

    @property
    def modules_dir(self) -> Path:
        """Where modules.dep and the .ko files of this kernel live."""
        return self.modules_root / self.version


def find_kernel(
    prefer: str = "cloud",
    vmlinuz: str | os.PathLike[str] | None = None,
    needs: Sequence[str] = (),
) -> Kernel:
    """The kernel to boot: an explicit vmlinuz, else the newest /boot one with modules that has
    every module in ``needs`` (e.g. "9p", which the cloud kernel lacks), preferring ``prefer``."""
    if vmlinuz is not None:
        path = Path(vmlinuz)
        version = path.name.removeprefix("vmlinuz-")
        if not path.is_file():
            raise GuestkitError(f"kernel {path} does not exist")
        return Kernel(path, version)
    found = []
    for name in glob.glob("/boot/vmlinuz-*"):
        version = os.path.basename(name).removeprefix("vmlinuz-")
        kernel = Kernel(Path(name), version)
        if (kernel.modules_dir / "modules.dep").is_file() and all(_has_module(kernel, m) for m in needs):
            found.append(kernel)
    if not found:
        what = f" with modules {', '.join(needs)}" if needs else ""
        raise MissingHostPart(
            f"no kernel in /boot{what} (and its /lib/modules): install linux-image-cloud-amd64"
            + (" or linux-image-amd64" if needs else "")
        )
    found.sort(key=lambda k: (prefer in k.version, k.version))
    return found[-1]


def _has_module(kernel: Kernel, name: str) -> bool:
    try:
        resolve_modules(kernel, [name])
    except GuestkitError:
        return False
    return True


def _norm(name: str) -> str:
    return name.replace("-", "_")


def _module_name(path: str) -> str:
    base = os.path.basename(path)
    return _norm(re.sub(r"\.ko(\.(xz|zst|gz))?$", "", base))


def _read_dep(kernel: Kernel) -> dict[str, tuple[str, list[str]]]:
    """name -> (relative path, [dependency relative paths]) from modules.dep."""
    table: dict[str, tuple[str, list[str]]] = {}
    with open(kernel.modules_dir / "modules.dep", encoding="utf-8") as f:
        for line in f:
            mod, _, deps = line.partition(":")
            table[_module_name(mod)] = (mod.strip(), deps.split())
    return table


def _builtin(kernel: Kernel) -> set[str]:
    path = kernel.modules_dir / "modules.builtin"
    if not path.is_file():
        return set()
    return {_module_name(line.strip()) for line in path.read_text().splitlines() if line.strip()}


def _softdeps(kernel: Kernel) -> dict[str, list[str]]:
    """name -> the "pre:" soft dependencies of modules.softdep (what modprobe loads first)."""
    path = kernel.modules_dir / "modules.softdep"
    deps: dict[str, list[str]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) > 3 and words[0] == "softdep" and "pre:" in words:
                pre = words[words.index("pre:") + 1 :]
                pre = pre[: pre.index("post:")] if "post:" in pre else pre
                deps.setdefault(_norm(words[1]), []).extend(pre)
    return deps


def _aliases(kernel: Kernel) -> dict[str, list[str]]:
    """Exact (non-pattern) aliases of modules.alias: "crypto-crc32c" -> [crc32c_intel, ...]."""
    path = kernel.modules_dir / "modules.alias"
    table: dict[str, list[str]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            words = line.split()
            if len(words) == 3 and words[0] == "alias" and not any(c in words[1] for c in "*?["):
                table.setdefault(words[1], []).append(_norm(words[2]))
    return table


def resolve_modules(kernel: Kernel, names: list[str]) -> list[str]:
    """Relative module paths (under modules_dir) in a valid load order, dependencies first.

    Hard dependencies come from modules.dep; soft "pre:" dependencies (ext4 needs crc32c through
    the crypto API, which modules.dep does not say) from modules.softdep, each alias expanded to
    every module providing it and marked optional with a leading "?": a guest CPU may lack what
    one of them needs (crc32c_intel under TCG), and modprobe would not fail on it either.
    Built-in modules are skipped; an unknown name is an error naming the kernel, since a typo
    would otherwise only show as a missing disk inside the guest.
    """
    table = _read_dep(kernel)
    builtin = _builtin(kernel)
    soft = _softdeps(kernel)
    aliases: dict[str, list[str]] | None = None
    by_path = {rel: name for name, (rel, _) in table.items()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, optional: bool = False) -> None:
        nonlocal aliases
        if name in seen:
            return
        seen.add(name)
        rel, deps = table[name]
        for pre in soft.get(name, []):
            if aliases is None:
                aliases = _aliases(kernel)
            for cand in [_norm(pre)] if _norm(pre) in table else aliases.get(pre, []):
                if cand in table and cand not in builtin:
                    visit(cand, optional=True)
        for dep in deps:
            visit(by_path.get(dep, _module_name(dep)), optional)
        order.append(("?" if optional else "") + rel)

    for raw in names:
        name = _norm(raw)
        if name in table:
            visit(name)
        elif name not in builtin:
            raise GuestkitError(f"kernel {kernel.version} has no module {raw!r}")
    return order


def module_bytes(kernel: Kernel, rel: str) -> tuple[str, bytes]:
    """(path inside the image, uncompressed .ko content): busybox insmod takes plain .ko only."""
    src = kernel.modules_dir / rel
    data = src.read_bytes()
    dest = str(Path("lib/modules") / kernel.version / rel)
    if rel.endswith(".xz"):
        return dest[:-3], lzma.decompress(data)
    if rel.endswith(".zst"):
        out = subprocess.run(["zstd", "-dc", str(src)], capture_output=True, check=False)
        if out.returncode != 0:
            raise MissingHostPart(f"cannot decompress {src}: install zstd")
        return dest[:-4], out.stdout
    if rel.endswith(".gz"):
        return dest[:-3], gzip.decompress(data)
    return dest, data
