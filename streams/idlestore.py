"""Where a partition's idle users wait, packed: in memory, or on local disk in RocksDB.

The decision core keeps users that change as objects and packs the others into an
``idle`` mapping (``DecisionCore.pack_idle``). With ``store = "memory"`` that mapping is
a dict; with ``store = "rocksdb"`` it is this RocksDB-backed one (``rocksdict``, the
binding faust-streaming's own RocksDB tables use), so that a worker's memory stays
nearly flat however many users it holds. Either way it is a cache: the changelog
(``engine.state``) is the truth, and a partition's store is rebuilt from it on every
assignment.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from rocksdict import Options, Rdict

_WRITE_BUFFER_BYTES = 8 * 1024 * 1024  # RocksDB's 64 MB default would be most of the memory


class RocksIdleStore(MutableMapping):
    """``user_id -> packed user`` in a RocksDB database of its own, emptied on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(_WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(2)
        shutil.rmtree(path, ignore_errors=True)  # a cache of the changelog: never trusted across runs
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path), options)

    def __getitem__(self, user_id: str) -> bytes:
        packed = self._db.get(user_id.encode())
        if packed is None:
            raise KeyError(user_id)
        return packed

    def get(self, user_id: str, default: bytes | None = None) -> bytes | None:
        packed = self._db.get(user_id.encode())
        return default if packed is None else packed

    def pop(self, user_id: str, default: bytes | None = None) -> bytes | None:
        key = user_id.encode()
        packed = self._db.get(key)
        if packed is None:
            return default
        del self._db[key]
        return packed

    def __setitem__(self, user_id: str, packed: bytes) -> None:
        self._db[user_id.encode()] = packed

    def __delitem__(self, user_id: str) -> None:
        del self._db[user_id.encode()]

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, str) and self._db.get(user_id.encode()) is not None

    def __iter__(self) -> Iterator[str]:
        return (key.decode() for key in self._db.keys())

    def __len__(self) -> int:
        """RocksDB's estimate: exact counting would read every key."""
        return self._db.property_int_value("rocksdb.estimate-num-keys") or 0

    def close(self) -> None:
        """Close and delete: the next owner of the partition rebuilds it from the changelog."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
