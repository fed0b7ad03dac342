"""`vhostscsi serve` with one source mutation applied in memory, to prove a daemon-level test can fail.

    HARDENING_MUTANT='module|old text|new text' python mutant_serve.py serve --config ...

Used by hand (and by the harness when HARDENING_MUTANT is set): break the code under test, see the test go red.
Never used by a normal run.
"""

from __future__ import annotations

import importlib
import os
import sys


def apply(spec: str) -> None:
    mod_name, old, new = spec.split("|", 2)
    mod = importlib.import_module(mod_name)
    with open(mod.__file__) as f:
        src = f.read()
    if src.count(old) != 1:
        raise SystemExit(f"mutation site found {src.count(old)} times in {mod_name}")
    before = dict(vars(mod))
    exec(compile(src.replace(old, new), mod.__file__, "exec"), mod.__dict__)
    # names other modules already imported from it (package re-exports) must see the mutant too
    swapped = {id(obj): vars(mod)[name] for name, obj in before.items()
               if isinstance(obj, type) or callable(obj) and getattr(obj, "__module__", None) == mod_name}
    for other in list(sys.modules.values()):
        if other is None or other is mod:
            continue
        for name, obj in list(vars(other).items()):
            if id(obj) in swapped:
                setattr(other, name, swapped[id(obj)])


if __name__ == "__main__":
    apply(os.environ["HARDENING_MUTANT"])
    from vhostscsi import cli

    sys.exit(cli.main(sys.argv[1:]))
