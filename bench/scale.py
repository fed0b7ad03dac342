#!/usr/bin/env python3
"""How the shell and the store scale: 1,000 fileio storage objects exported as 1,000 LUNs.

Prints wall-clock times for loading the saved file, building the tree, `ls`, a create, a
delete and a save, both inside one shell (what an interactive admin waits for) and as one-shot
`vhostscsi ...` processes (what a script waits for, Python start-up included).

    python3 bench/scale.py [--count 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vhostscsi.config.model import Config, new_storage_object, new_vhost_target
from vhostscsi.config.store import load_config, save_config
from vhostscsi.shell.main import VhostShell
from vhostscsi.shell.root import Root
from vhostscsi.shell.session import Session


def build(count: int, workdir: Path) -> Path:
    """Write a saved configuration with `count` fileio objects, each exported by its own LUN."""
    cfg = Config()
    target = cfg.add_target(new_vhost_target())
    for i in range(count):
        image = workdir / f"disk{i}.img"
        with open(image, "wb") as f:
            f.truncate(1 << 30)
        so = cfg.add_storage_object(new_storage_object("fileio", f"disk{i}", dev=str(image), size=1 << 30))
        target.tpgs[0].add_lun(so, i)
    path = workdir / "etc" / "saveconfig.json"
    save_config(cfg, path)
    return path


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send fd 1 to /dev/null (configshell writes to the process's original stdout)."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def in_process(path: Path, workdir: Path, repeat: int) -> list[tuple[str, float]]:
    results = [("load_config", best(lambda: load_config(path), repeat))]
    session = Session(path)
    session.load()
    shell = VhostShell(None)
    start = time.perf_counter()
    root = Root(shell, session)
    results.append(("build tree", time.perf_counter() - start))
    wwn = session.config.vhost_targets()[0].wwn
    with quiet():
        results.append(("ls (whole tree)", best(lambda: shell.run_cmdline("ls"), repeat)))
        start = time.perf_counter()
        shell.run_cmdline(f"/backstores/fileio create name=extra file_or_dev={workdir}/extra.img size=1G")
        shell.run_cmdline(f"/vhost/{wwn}/tpg1/luns create /backstores/fileio/extra")
        results.append(("create backstore + LUN", time.perf_counter() - start))
        start = time.perf_counter()
        shell.run_cmdline(f"/vhost/{wwn}/tpg1/luns delete lun{len(session.config.storage_objects) - 1}")
        shell.run_cmdline("/backstores/fileio delete extra")
        results.append(("delete LUN + backstore", time.perf_counter() - start))
    del root
    results.append(("save_config", best(lambda: session.save(), repeat)))
    return results


def one_shot(path: Path, workdir: Path, repeat: int) -> list[tuple[str, float]]:
    env = dict(os.environ)
    base = [sys.executable, "-m", "vhostscsi", "--config", str(path)]
    wwn = load_config(path).vhost_targets()[0].wwn
    count = len(load_config(path).storage_objects)

    def call(*args: str) -> None:
        subprocess.run([*base, *args], check=True, env=env, stdout=subprocess.DEVNULL)

    results = [("vhostscsi ls", best(lambda: call("ls"), repeat))]
    results.append(("vhostscsi --version (start-up only)", best(lambda: call("--version"), repeat)))
    start = time.perf_counter()
    call("/backstores/fileio", "create", "name=extra", f"file_or_dev={workdir}/extra2.img", "size=1G")
    results.append(("vhostscsi .../fileio create (load+run+save)", time.perf_counter() - start))
    start = time.perf_counter()
    call(f"/vhost/{wwn}/tpg1/luns", "create", "/backstores/fileio/extra")
    results.append(("vhostscsi .../luns create", time.perf_counter() - start))
    start = time.perf_counter()
    call(f"/vhost/{wwn}/tpg1/luns", "delete", f"lun{count}")
    results.append(("vhostscsi .../luns delete", time.perf_counter() - start))
    start = time.perf_counter()
    call("/backstores/fileio", "delete", "extra")
    results.append(("vhostscsi .../fileio delete", time.perf_counter() - start))
    start = time.perf_counter()
    call("saveconfig")
    results.append(("vhostscsi saveconfig", time.perf_counter() - start))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        path = build(args.count, workdir)
        print(f"{args.count} fileio storage objects, {args.count} LUNs; saved file "
              f"{path.stat().st_size} bytes")
        print("inside one shell:")
        for name, seconds in in_process(path, workdir, args.repeat):
            print(f"  {name:45s} {seconds * 1000:8.1f} ms")
        print("one-shot commands (whole process):")
        for name, seconds in one_shot(path, workdir, args.repeat):
            print(f"  {name:45s} {seconds * 1000:8.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
