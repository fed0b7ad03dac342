"""`vhostscsi serve` with one source mutation applied in memory, to prove a daemon-level test can fail.

    HARDENING_MUTANT='module|old text|new text' python mutant_serve.py serve --config ...

Used by hand (and by the harness when HARDENING_MUTANT is set): break the code under test, see the test go red.
Never used by a normal run.

The daemon runs the pure-Python data path (VHOSTSCSI_NATIVE=0): the C request-queue path (vhostscsi._native)
would otherwise answer READ/WRITE on a quiet LUN without the mutated Python. A mutation in scsi/sbc.py also turns
off `TargetPort.execute_fast`, which answers those same commands without sbc: every READ/WRITE then reaches the
mutated handlers.
"""

from __future__ import annotations

import importlib
import os
import sys
import types


def _body(f: types.FunctionType) -> tuple:
    c = f.__code__
    return (c.co_code, c.co_consts, c.co_names)


def apply(spec: str) -> None:
    mod_name, old, new = spec.split("|", 2)
    if mod_name == "vhostscsi.scsi.sbc":
        from vhostscsi.scsi.port import TargetPort

        TargetPort.execute_fast = lambda self, *args: None  # type: ignore[method-assign]
    mod = importlib.import_module(mod_name)
    with open(mod.__file__) as f:
        src = f.read()
    if src.count(old) != 1:
        raise SystemExit(f"mutation site found {src.count(old)} times in {mod_name}")
    before = dict(vars(mod))
    exec(compile(src.replace(old, new), mod.__file__, "exec"), mod.__dict__)
    for name, was in before.items():
        now = vars(mod).get(name)
        if isinstance(was, type) and isinstance(now, type) and was is not now:
            # keep the class object (subclasses and other modules hold it), give it the mutated methods only
            # (a mutated method that calls super() would not work this way: mutate another line)
            for attr, value in vars(now).items():
                old_value = vars(was).get(attr)
                if isinstance(value, types.FunctionType) and (
                        not isinstance(old_value, types.FunctionType) or _body(value) != _body(old_value)):
                    setattr(was, attr, value)
            setattr(mod, name, was)
        elif callable(was) and getattr(was, "__module__", None) == mod_name and now is not was:
            for other in list(sys.modules.values()):  # re-exported functions
                if other is not None and other is not mod and getattr(other, name, None) is was:
                    setattr(other, name, now)


if __name__ == "__main__":
    os.environ["VHOSTSCSI_NATIVE"] = "0"  # before vhostscsi.virtio.native is imported (it reads it once)
    apply(os.environ["HARDENING_MUTANT"])
    from vhostscsi import cli

    sys.exit(cli.main(sys.argv[1:]))
