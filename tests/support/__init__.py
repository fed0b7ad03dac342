"""Helpers shared by the test directories (tests/ is on pytest's pythonpath: `from support.daemon import ...`)."""
