"""Helpers shared by the test directories (tests/ is on pytest's pythonpath: `from support.daemon import ...`).

A test that lacks a host part scripts/setup installs (QEMU 10, busybox, a guest kernel...) calls
support.hostparts.missing_host_part (or require_host_part): it skips on a dev box and fails under CI (VHOSTSCSI_CI=1).
"""
