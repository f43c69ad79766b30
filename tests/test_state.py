"""The encodings of a user's state: packed bytes in memory and in the changelog, and the JSON
that earlier versions wrote to the changelog."""
from __future__ import annotations

from array import array

from hypothesis import given, strategies as st

import orjson
import pytest

from domain.state import (
    PairState, UserState, changelog_value, from_changelog, pack_user, packed_pairs, unpack_user,
)

_INT = st.integers(-(1 << 63) + 1, (1 << 63) - 1)  # -2**63 itself marks None when packed
_MAYBE = st.one_of(st.none(), st.integers(0, 1 << 50))


@st.composite
def messages(draw, base: int, spread: int) -> array:
    kept = draw(st.lists(st.tuples(st.integers(base, base + spread), _INT), max_size=8))
    return array("q", [value for message in sorted(kept) for value in message])


@st.composite
def pairs(draw) -> PairState:
    # Times a pair keeps span less than 2**32 ms, packed in 4 bytes; wider spans in 8.
    base, spread = draw(st.integers(0, 1 << 50)), draw(st.sampled_from([(1 << 32) - 1, 1 << 40]))
    return PairState(
        inbound=draw(messages(base, spread)), outbound=draw(messages(base, spread)),
        last_ts=draw(st.integers(-1, 1 << 50)), last_inbound_ts=draw(st.integers(-1, 1 << 50)),
        last_inbound_key=draw(_INT), app=draw(st.sampled_from(["", "whatsapp", "facebook", "instagram"])),
        due=draw(_MAYBE), emitted_at=draw(_MAYBE), queued=draw(_MAYBE),
    )


bots = st.text(min_size=1, max_size=20)  # any Unicode: packed as UTF-8 with its length
users = st.builds(
    UserState,
    tz=st.sampled_from([None, "Europe/Paris", "America/St_Johns"]),
    minor=st.sampled_from([None, False, True]),
    opt_out_all=st.booleans(),
    opt_out_bots=st.frozensets(bots, max_size=3), opt_in_bots=st.frozensets(bots, max_size=3),
    opt_in_at=st.one_of(st.none(), st.dictionaries(st.one_of(bots, st.just("*")), st.integers(0, 1 << 50), min_size=1, max_size=3)),
    distress_until=st.integers(-1, 1 << 50),
    sends=st.lists(st.integers(0, 1 << 50), max_size=4).map(tuple),
    pairs=st.dictionaries(bots, pairs(), max_size=4),
)


@given(users)
def test_a_packed_user_unpacks_to_the_same_state_queue_position_included(user):
    packed = pack_user(user)
    again = unpack_user(packed)
    assert again == user
    assert {bot: pair.queued for bot, pair in again.pairs.items()} == {bot: pair.queued for bot, pair in user.pairs.items()}
    assert packed_pairs(packed) == len(user.pairs)


@given(users)
def test_the_changelog_encoding_round_trips_without_the_queue_positions(user):
    again = from_changelog(changelog_value(user))
    assert again == user
    assert all(pair.queued is None for pair in again.pairs.values())  # scheduled afresh on restore


@given(users)
def test_the_json_changelog_of_earlier_versions_is_still_read(user):
    assert UserState.from_dict(user.to_dict()) == user
    assert from_changelog(orjson.dumps(user.to_dict())) == user


def test_a_changelog_value_of_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format"):
        from_changelog(b"\x02" + changelog_value(UserState())[1:])


def test_a_packed_user_is_several_times_smaller_than_its_objects():
    import sys
    user = UserState(pairs={"maestro": PairState(inbound=array("q", range(10)), outbound=array("q", range(4)),
                                                 last_ts=5, last_inbound_ts=5, app="whatsapp", due=9)})
    pair = user.pairs["maestro"]
    as_objects = (sys.getsizeof(user) + sys.getsizeof(user.pairs) + sys.getsizeof(pair) + sys.getsizeof(pair.inbound)
                  + sys.getsizeof(pair.outbound)
                  + sum(sys.getsizeof(getattr(pair, name)) for name in ("last_ts", "last_inbound_ts", "last_inbound_key", "due")))
    assert sys.getsizeof(pack_user(user)) * 3 < as_objects


def test_a_kept_message_packs_in_16_bytes():
    def packed_size(count: int) -> int:
        times_and_keys = [value for ts in range(count) for value in (1_795_856_400_000 + ts * 60_000, ts)]
        return len(pack_user(UserState(pairs={"b": PairState(inbound=array("q", times_and_keys))})))
    assert packed_size(50) - packed_size(10) == 40 * 16


def test_a_key_is_recognised_at_key_places_only():
    pair = PairState(inbound=array("q", [1_795_856_400_000, 7]), outbound=array("q", [1_795_856_460_000, -3]))
    assert not pair.add(1_795_856_500_000, 7, inbound=False)       # kept inbound: a re-send
    assert not pair.add(1_795_856_500_000, -3, inbound=True)       # kept outbound: a re-send
    assert pair.add(1_795_856_500_000, 1_795_856_400_000, inbound=True)  # equal to a kept time only
    assert pair.add(1_795_856_000_000, 9, inbound=True)            # late: kept in time order
    assert pair.inbound_times() == [1_795_856_000_000, 1_795_856_400_000, 1_795_856_500_000]
