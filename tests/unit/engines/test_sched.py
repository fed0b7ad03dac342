"""The daemon's CPU scheduling policy (engines/user/sched.py): SCHED_BATCH unless told otherwise or set from
outside. Each case runs in a child process, so the test runner's own policy is never changed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling policies only")

CHILD = ("import logging, os, sys; logging.basicConfig(stream=sys.stdout, format='%(message)s'); "
         "from vhostscsi.engines.user.sched import apply_policy; "
         "print(apply_policy()); print(os.sched_getscheduler(0))")


def _child(env_value: str | None, preexec=None) -> list[str]:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != "VHOSTSCSI_SCHED"}
    if env_value is not None:
        env["VHOSTSCSI_SCHED"] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True,
                         preexec_fn=preexec, timeout=60)
    return out.stdout.splitlines()


def test_default_is_batch() -> None:
    lines = _child(None)
    assert lines[-2:] == ["SCHED_BATCH", str(os.SCHED_BATCH)]


def test_other_keeps_the_normal_policy() -> None:
    lines = _child("other")
    assert lines[-1] == str(os.SCHED_OTHER)
    assert "as asked" in lines[-2]


def test_unknown_value_warns_and_uses_batch() -> None:
    lines = _child("fifo")
    assert any("VHOSTSCSI_SCHED='fifo'" in line for line in lines)
    assert lines[-1] == str(os.SCHED_BATCH)


def test_a_policy_set_from_outside_is_left_alone() -> None:
    lines = _child(None, preexec=lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)))
    assert lines[-1] == str(os.SCHED_IDLE)
    assert "set from outside" in lines[-2]
