"""Shared set-up for the atheris harnesses: import paths, instrumentation, and a replay mode without atheris.

    python fuzz/fuzz_<name>.py [libFuzzer options]    coverage-guided run, corpus in fuzz/corpus/<name>
    python fuzz/fuzz_<name>.py --replay               run every corpus input once (no atheris needed)
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the hardening test helpers (guarded memory, reference walker, engine)
CORPUS = Path(__file__).resolve().parent / "corpus"
os.environ.setdefault("VHOSTSCSI_FUZZ_CASES", "1")  # the test modules are imported for their helpers only


def hardening_module(name: str) -> Callable[[], ModuleType]:
    """The `load` of a harness: tests/hardening/test_fuzz_<name>.py, whose helpers and checks it reuses. A loader,
    not an import, so that a coverage-guided run imports it (and vhostscsi) inside atheris's instrumentation."""
    return lambda: importlib.import_module(f"hardening.test_fuzz_{name}")


def run(name: str, load: Callable[[], ModuleType], make: Callable[[ModuleType], Callable[[bytes], None]]) -> None:
    args = sys.argv[1:]
    corpus = CORPUS / name
    if args[:1] == ["--replay"]:
        print(f"{name}: {replay(name, make(load()))} corpus inputs replayed")
        return
    import atheris

    with atheris.instrument_imports(include=["vhostscsi"]):
        module = load()
    one_input = make(module)
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(not a.startswith("-") for a in args):
        args.append(str(corpus))
    atheris.Setup([sys.argv[0], *args], one_input)
    atheris.Fuzz()


def replay(name: str, one_input: Callable[[bytes], None]) -> int:
    """Run every stored input of corpus `name` through `one_input`; returns how many (for the CI test)."""
    files = sorted((CORPUS / name).iterdir())
    for path in files:
        one_input(path.read_bytes())
    return len(files)
