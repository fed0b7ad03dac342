"""A random.Random whose every decision is read from the fuzzer's input, so coverage-guided mutations of the
input steer the hardening tests' generators (which draw from a Random) instead of reseeding them blindly.

Past the end of the input, decisions come from a PRNG seeded with the input (still deterministic): constant
zeros would make rejection loops such as random.sample's `while j in selected` spin forever."""

from __future__ import annotations

import random


class BytesRandom(random.Random):
    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._rest = random.Random(data)
        super().__init__(0)

    def _bytes(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += n
        return chunk + self._rest.randbytes(n - len(chunk)) if len(chunk) < n else chunk

    def _take(self, n: int) -> int:
        return int.from_bytes(self._bytes(n), "little")

    def getrandbits(self, k: int) -> int:
        return self._take((k + 7) // 8) & ((1 << k) - 1) if k else 0

    def random(self) -> float:
        return self._take(2) / 65536.0

    def randbytes(self, n: int) -> bytes:
        return self._bytes(n)

    def seed(self, *args: object, **kw: object) -> None:  # called by Random.__init__; nothing to seed
        pass
