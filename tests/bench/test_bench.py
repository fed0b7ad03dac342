"""The benchmark still runs and its output is well formed. No figure is judged here: timings on a shared
two-core machine are noise, so the bars live in the benchmark's report, never in an assertion."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.hostparts import missing_host_part

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "bench" / "run.py"
sys.path.insert(0, str(ROOT / "bench"))

import profile_stacks  # noqa: E402

NUMERIC = ("iops", "mb_s")
OURS_FIELDS = ("iops", "mb_s", "lat_p50_us", "lat_p99_us", "backend_cpu_s", "driver_cpu_s", "ios_per_backend_cpu_s",
               "errors", "ios")


def _run(tmp_path: Path, *extra: str, timeout: float = 300) -> tuple[dict, str]:
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(RUN), "--quick", "--json", str(out), "--workdir", str(tmp_path), *extra],
                       capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text()), p.stdout


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def test_quick_run_prints_table_and_writes_json(tmp_path: Path) -> None:
    profiling = shutil.which("py-spy") is not None
    data, stdout = _run(tmp_path, *(["--profile", "1"] if profiling else []))
    assert "case" in stdout and "IO/bkCPUs" in stdout and "bars (host side" in stdout
    assert data["meta"]["quick"] is True and data["meta"]["load_start"]
    rows = data["host"]
    backends = {r["backend"] for r in rows}
    assert {"ours ramdisk", "ours fileio", "host direct", "memcpy"} <= backends
    if shutil.which("qemu-storage-daemon"):
        assert "qsd fileio" in backends
    assert {r["queues"] for r in rows} == {1, 2}
    for r in rows:
        for k in NUMERIC:
            assert _finite(r[k]) and r[k] > 0, r
        if r["backend"].startswith(("ours", "qsd")):
            for k in OURS_FIELDS:
                assert _finite(r[k]), (k, r)
            assert r["errors"] == 0, r
            assert r["backend_cpu_s"] > 0 and r["ios"] > 0, r
            assert r["lat_p50_us"] <= r["lat_p99_us"], r
            assert r["calls"] > 0 and r["kicks"] > 0 and r["ios_per_call"] > 0, r
            assert r["case"] in stdout
    bars = {b["bar"]: b for b in data["bars"]}
    assert set(bars) >= {"rd_qd32_per_cpu_s", "seq_read_vs_direct", "guest_vs_builtin", "two_queues_vs_one"}
    for name in ("rd_qd32_per_cpu_s", "seq_read_vs_direct", "two_queues_vs_one"):
        assert _finite(bars[name]["value"]) and isinstance(bars[name]["met"], bool)
    assert bars["guest_vs_builtin"]["value"] is None  # quick mode boots no guest
    if profiling:
        prof = data["profile"]
        assert prof["samples"] > 0 and prof["self"], prof
        assert all(0 <= r["self_pct"] <= r["total_pct"] <= 100 for r in prof["self"])
    assert not list(tmp_path.glob("vhostscsi-bench-*")), "work directory left behind"


def test_profile_summary_counts_self_and_inclusive() -> None:
    raw = ("process 1:\"python\";main (/x/vhostscsi/cli.py:3);serve (/x/vhostscsi/rings.py:9);"
           "_signal (/x/vhostscsi/rings.py:30) 6\n"
           "main (/x/vhostscsi/cli.py:3);serve (/x/vhostscsi/rings.py:9) 2\n"
           "main (/x/vhostscsi/cli.py:3);EpollSelector.select (/usr/lib/python3.11/selectors.py:468) 2\n")
    s = profile_stacks.summarize(raw, top=4)
    assert s["samples"] == 8 and s["idle_samples"] == 2  # a leaf in select() is waiting, not working
    by = {r["function"]: r for r in s["self"]}
    assert by["_signal (rings.py)"] == {"function": "_signal (rings.py)", "self_pct": 75.0, "total_pct": 75.0}
    assert by["serve (rings.py)"]["total_pct"] == 100.0 and by["serve (rings.py)"]["self_pct"] == 25.0
    assert {"function": "main (cli.py)", "total_pct": 100.0} in s["inclusive"]


@pytest.mark.guest
@pytest.mark.slow
def test_guest_part_runs(tmp_path: Path) -> None:
    from vhostscsi.guestkit import MissingHostPart, find_kernel

    try:
        find_kernel()
    except MissingHostPart as e:
        missing_host_part(str(e))
    if not shutil.which("fio"):
        missing_host_part("fio is not installed (the guest runs the host's fio): run scripts/setup")
    data, stdout = _run(tmp_path, "--guest", "yes", "--guest-seconds", "1", "--guest-rounds", "1", "--no-qsd", "--queues", "1",
                        timeout=900)
    g = data["guest"]
    assert set(g["ratio"]) == set(g["ours"]) == set(g["qemu_builtin"]) and g["ratio"]
    assert all(_finite(v) and v > 0 for v in g["ratio"].values())
    assert "in-guest fio" in stdout


@pytest.mark.parametrize("backend", ["fileio", "ramdisk"])
def test_threads_bench_runs_and_serves_every_request(backend: str) -> None:
    """bench/threads.py checks itself that every posted request was served and reaped (exit status otherwise);
    here: it still runs and prints both modes and their ratio. No figure is judged."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "threads.py"), "--backend", backend, "--rounds", "2",
                        "--queue-size", "64", "--span", str(8 << 20)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert any(line.strip().startswith("1 thread, both queues") for line in lines), p.stdout
    assert any(line.strip().startswith("2 threads, a queue each") for line in lines), p.stdout
    ratio = [line for line in lines if "2 threads / 1 thread:" in line]
    assert len(ratio) == 1 and math.isfinite(float(ratio[0].rsplit(":", 1)[1])), p.stdout
