"""A partition's idle users and due times on local disk, in RocksDB.

The decision core keeps users that change as objects and packs the others into an
``idle`` mapping (``DecisionCore.pack_idle``); it keeps every pair's next due time in a
``DueTimes`` index. With ``store = "memory"`` those are a dict and a heap; with
``store = "rocksdb"`` they are these (``rocksdict``, the binding faust-streaming's own
RocksDB tables use), so that a worker's memory stays nearly flat however many users it
holds. Either way they are a cache: the changelog (``engine.state``) is the truth, and a
partition's store is rebuilt from it on every assignment.
"""
from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator, MutableMapping
from pathlib import Path

from rocksdict import Options, Rdict

_WRITE_BUFFER_BYTES = 8 * 1024 * 1024  # RocksDB's 64 MB default would be most of the memory


def _open_empty(path: Path) -> Rdict:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(_WRITE_BUFFER_BYTES)
    options.set_max_write_buffer_number(2)
    shutil.rmtree(path, ignore_errors=True)  # a cache of the changelog: never trusted across runs
    path.parent.mkdir(parents=True, exist_ok=True)
    return Rdict(str(path), options)


class RocksIdleStore(MutableMapping):
    """``user_id -> packed user`` in a RocksDB database of its own, emptied on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _open_empty(path)

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


class RocksDueTimes:
    """``DueTimes`` as RocksDB keys that RocksDB keeps in the heap's order, (time, user,
    bot): the time in 8 bytes big-endian, the user id with each NUL written NUL 0xFF and
    ended by a NUL, then the bot id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = _open_empty(path)
        # Every key below this one was popped: seeking here skips their tombstones, which
        # a queue that deletes from its front would otherwise scan again and again.
        self._floor = b""

    def push(self, time: int, user_id: str, bot_id: str) -> None:
        key = _TIME.pack(time) + user_id.encode().replace(b"\x00", b"\x00\xff") + b"\x00" + bot_id.encode()
        self._db[key] = b""
        self._floor = min(self._floor, key)

    def pop(self) -> tuple[int, str, str]:
        key = self._first()
        if key is None:
            raise IndexError("pop from empty due times")
        del self._db[key]
        self._floor = key
        user, bot = _split_ids(key[_TIME.size:])
        return _TIME.unpack_from(key)[0], user, bot

    def earliest(self) -> int | None:
        key = self._first()
        return None if key is None else _TIME.unpack_from(key)[0]

    def _first(self) -> bytes | None:
        cursor = self._db.iter()
        cursor.seek(self._floor)
        key = cursor.key() if cursor.valid() else None
        del cursor  # an open iterator holds the database
        return key

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)


_TIME = struct.Struct(">Q")


def _split_ids(ids: bytes) -> tuple[str, str]:
    end = ids.find(b"\x00")
    while ids[end + 1:end + 2] == b"\xff":  # a NUL inside the user id
        end = ids.find(b"\x00", end + 2)
    return ids[:end].replace(b"\x00\xff", b"\x00").decode(), ids[end + 1:].decode()
