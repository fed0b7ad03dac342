"""Busybox initramfs images for test and demo guests, cached by what goes into them.

The cache key is computed from the inputs (kernel, module list, host files' identity, scripts)
before anything is read or packed, so a test session that asks for an image it already has pays
a few stat() calls, not a rebuild.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vhostscsi.guestkit.binaries import resolve_binary, shared_libraries
from vhostscsi.guestkit.cpio import Entry, write_cpio
from vhostscsi.guestkit.kernel import Kernel, MissingHostPart, find_kernel, module_bytes, resolve_modules
from vhostscsi.guestkit.snippets import MODULE_LIST, wrap_init

__all__ = ["GuestImage", "default_cache_dir", "prune_cache", "BUSYBOX", "CACHE_LIMIT"]

BUSYBOX = "/usr/bin/busybox"
CACHE_LIMIT = 2 << 30  # bytes of images kept in a cache directory
_FORMAT = 1  # bump when the image layout changes, so old cache entries are not reused
FileSource = bytes | str | os.PathLike[str]


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/vhostscsi, else ~/.cache/vhostscsi."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vhostscsi"


def _identity(path: Path) -> list[object]:
    """What makes a host file's content change: its path, size and mtime (cheap, no read)."""
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _file_source_key(src: FileSource) -> object:
    if isinstance(src, bytes):
        return hashlib.sha256(src).hexdigest()
    return _identity(Path(src))


@dataclass(frozen=True)
class GuestImage:
    """A kernel plus an initramfs that together boot a busybox test guest."""

    kernel: Path
    initrd: Path
    kernel_version: str
    #: /init is guestkit's wrapper: it prints EXIT_MARKER when the caller's script ends
    wrapped: bool = True

    @classmethod
    def build(
        cls,
        workdir: str | os.PathLike[str] | None = None,
        extra_binaries: Sequence[str] = (),
        modules: Sequence[str] = (),
        init_script: str = "",
        *,
        extra_files: Mapping[str, FileSource] | None = None,
        kernel: str | os.PathLike[str] | None = None,
        wrap: bool = True,
        compress: bool = False,
    ) -> "GuestImage":
        """Build (or reuse) an image.

        ``workdir`` is where images are kept, content-addressed (default: the user cache dir);
        ``modules`` are module names, resolved with dependencies; ``extra_binaries`` are host
        programs copied at their host paths with their libraries; ``extra_files`` maps guest
        paths to bytes or host files. With ``wrap`` (the default) ``init_script`` runs after the
        prelude (mounts, modules) and the guest prints ``GUESTKIT-EXIT <code>`` and powers off;
        without it, ``init_script`` is /init as given.
        """
        k = find_kernel(vmlinuz=kernel)
        mods = resolve_modules(k, list(modules))
        bins = [resolve_binary(b) for b in extra_binaries]
        libs = sorted({lib for b in bins for lib in shared_libraries(b)})
        files = dict(extra_files or {})
        key_src = {
            "format": _FORMAT,
            "kernel": _identity(k.vmlinuz),
            "modules": [[m.startswith("?"), *_identity(k.modules_dir / m.lstrip("?"))] for m in mods],
            "busybox": _identity(Path(BUSYBOX)),
            "binaries": [_identity(p) for p in bins + libs],
            "files": {g: _file_source_key(s) for g, s in sorted(files.items())},
            "init": init_script,
            "wrap": wrap,
            "compress": compress,
        }
        key = hashlib.sha256(json.dumps(key_src, sort_keys=True).encode()).hexdigest()[:24]
        out_dir = Path(workdir) if workdir is not None else default_cache_dir()
        initrd = out_dir / f"initrd-{key}.cpio{'.gz' if compress else ''}"
        if initrd.is_file():
            os.utime(initrd)  # last use, for pruning
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            blob = _pack(k, mods, bins + libs, files, init_script, wrap)
            if compress:
                blob = gzip.compress(blob, compresslevel=1, mtime=0)
            tmp = initrd.with_name(initrd.name + f".tmp{os.getpid()}")
            tmp.write_bytes(blob)
            os.replace(tmp, initrd)
            prune_cache(out_dir, keep=initrd)
        return cls(kernel=k.vmlinuz, initrd=initrd, kernel_version=k.version, wrapped=wrap)


def prune_cache(cache_dir: Path, limit_bytes: int = CACHE_LIMIT, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used images until the cache fits ``limit_bytes``.

    Every changed init script or case list makes a new image, so without this the cache only
    grows; ``keep`` (the image just built) is never deleted. Returns what was removed.
    """
    images = []
    for p in cache_dir.glob("initrd-*.cpio*"):
        try:
            st = p.stat()
        except FileNotFoundError:  # another process pruned it
            continue
        if ".tmp" not in p.name:
            images.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in images)
    removed = []
    for _, size, p in sorted(images):
        if total <= limit_bytes:
            break
        if keep is not None and p == keep:
            continue
        p.unlink(missing_ok=True)
        total -= size
        removed.append(p)
    return removed


def _busybox_applets() -> list[str]:
    if not os.path.isfile(BUSYBOX):
        raise MissingHostPart(f"{BUSYBOX} not found: install busybox-static")
    res = subprocess.run([BUSYBOX, "--list-full"], capture_output=True, text=True, check=True)
    return [line.strip().lstrip("/") for line in res.stdout.splitlines() if line.strip()]


def _read_source(src: FileSource) -> bytes:
    return src if isinstance(src, bytes) else Path(src).read_bytes()


def _pack(
    k: Kernel,
    mods: list[str],
    host_files: list[Path],
    files: Mapping[str, FileSource],
    init_script: str,
    wrap: bool,
) -> bytes:
    """The cpio bytes: directories first, then devices, files and applet links."""
    content: dict[str, tuple[int, bytes]] = {"bin/busybox": (0o755, Path(BUSYBOX).read_bytes())}
    module_paths = []
    for entry in mods:
        optional, rel = entry.startswith("?"), entry.lstrip("?")
        dest, data = module_bytes(k, rel)
        content[dest] = (0o644, data)
        module_paths.append(("?" if optional else "") + "/" + dest)
    content[MODULE_LIST.lstrip("/")] = (0o644, "".join(p + "\n" for p in module_paths).encode())
    for path in host_files:
        content[str(path).lstrip("/")] = (0o755, path.read_bytes())
    for guest_path, src in files.items():
        content[guest_path.lstrip("/")] = (0o755, _read_source(src))
    if wrap:
        content["guest.sh"] = (0o755, init_script.encode())
        content["init"] = (0o755, wrap_init("/guest.sh").encode())
    else:
        content["init"] = (0o755, init_script.encode())
    links = {a: "/bin/busybox" for a in _busybox_applets() if a not in content and a != "bin/busybox"}

    dirs = {"dev", "proc", "sys", "tmp", "run", "etc", "root"}
    for member in list(content) + list(links):
        parts = member.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))

    entries: list[Entry] = [Entry(d, stat.S_IFDIR | 0o755) for d in sorted(dirs)]
    entries += [
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)),
    ]
    entries += [Entry(p, stat.S_IFREG | mode, data) for p, (mode, data) in sorted(content.items())]
    entries += [Entry(p, stat.S_IFLNK | 0o777, t.encode()) for p, t in sorted(links.items())]
    buf = io.BytesIO()
    write_cpio(buf, entries)
    return buf.getvalue()


