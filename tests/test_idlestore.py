"""The RocksDB store behaves as the memory one: same users back, same due order."""
from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings, strategies as st

from domain.rules import HeapDueTimes
from streams.idlestore import RocksDueTimes, RocksIdleStore

_COUNTER = itertools.count()
_IDS = st.text(alphabet=st.sampled_from(["a", "b", "\x00", "é", "\uffff", "z"]), min_size=1, max_size=4)
_OPS = st.lists(st.one_of(
    st.tuples(st.just("push"), st.integers(0, 50), _IDS, _IDS),
    st.tuples(st.just("pop")),
), max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(_OPS)
def test_rocksdb_due_times_come_out_in_the_heaps_order(tmp_path, ops):
    rocks, heap = RocksDueTimes(tmp_path / f"due-{next(_COUNTER)}"), HeapDueTimes()
    pushed: set = set()
    try:
        for op in ops:
            if op[0] == "push":
                _, time, user, bot = op
                if (time, user, bot) in pushed:
                    continue  # the heap keeps copies, RocksDB one key: the core never relies on copies
                pushed.add((time, user, bot))
                rocks.push(time, user, bot)
                heap.push(time, user, bot)
            elif heap.earliest() is not None:
                entry = heap.pop()
                assert rocks.pop() == entry
                pushed.discard(entry)
            assert rocks.earliest() == heap.earliest()
        while heap.earliest() is not None:
            assert rocks.pop() == heap.pop()
        assert rocks.earliest() is None
    finally:
        rocks.close()


def test_the_rocksdb_idle_store_gives_back_what_it_was_given_and_forgets_on_pop(tmp_path):
    store = RocksIdleStore(tmp_path / "idle")
    try:
        store["u\x00é"] = b"\x00packed"
        store["u2"] = b"two"
        assert "u\x00é" in store and store.get("u2") == b"two" and store.get("nobody") is None
        assert store.pop("u\x00é") == b"\x00packed"
        assert "u\x00é" not in store and store.pop("u\x00é", None) is None
        assert sorted(store) == ["u2"]
    finally:
        store.close()
    assert not (tmp_path / "idle").exists()
