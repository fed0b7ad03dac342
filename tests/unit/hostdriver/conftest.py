"""Fixtures for the host-side driver tests (the pump itself lives in hostdriver_pump.py)."""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import pytest
from hostdriver_pump import Harness


@pytest.fixture
def harness_factory() -> Iterator[Any]:
    made: list[Harness] = []

    def make(ports: Mapping[int, Any], **kw: Any) -> Harness:
        h = Harness(ports, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()
        assert h.pump.error is None, f"pump crashed: {h.pump.error!r}"
