"""A random.Random whose every decision is read from the fuzzer's input, so coverage-guided mutations of the
input steer the hardening tests' generators (which draw from a Random) instead of reseeding them blindly."""

from __future__ import annotations

import random


class BytesRandom(random.Random):
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        super().__init__(0)

    def _take(self, n: int) -> int:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return int.from_bytes(chunk.ljust(n, b"\0"), "little")

    def getrandbits(self, k: int) -> int:
        return self._take((k + 7) // 8) & ((1 << k) - 1) if k else 0

    def random(self) -> float:
        return self._take(2) / 65536.0

    def randbytes(self, n: int) -> bytes:
        out = self._data[self._pos : self._pos + n].ljust(n, b"\0")
        self._pos += n
        return out

    def seed(self, *args: object, **kw: object) -> None:  # called by Random.__init__; nothing to seed
        pass
