"""SeenEvents: one (app, event_id) is one message, inside the horizon, in bounded memory."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.dedupe import SeenEvents

HOUR = 3_600_000
W = 14 * 24 * HOUR


def test_the_second_copy_of_an_event_is_seen_before():
    seen = SeenEvents(horizon_ms=W)
    assert seen.seen_before("whatsapp", "wamid.1", 1000) is False
    assert seen.seen_before("whatsapp", "wamid.1", 1000) is True
    assert seen.seen_before("whatsapp", "wamid.1", 5000) is True  # a re-send with another ts


def test_a_resend_that_moves_the_horizon_past_the_first_copy_is_new():
    seen = SeenEvents(horizon_ms=W)
    seen.seen_before("whatsapp", "wamid.1", 0)
    assert seen.seen_before("whatsapp", "wamid.1", W + 1) is False  # the first copy is past W


def test_the_same_id_on_another_app_is_another_event():
    seen = SeenEvents(horizon_ms=W)
    seen.seen_before("facebook", "m_1", 1000)
    assert seen.seen_before("instagram", "m_1", 1000) is False


def test_keys_older_than_the_horizon_behind_the_newest_ts_are_forgotten():
    seen = SeenEvents(horizon_ms=W)
    seen.seen_before("whatsapp", "old", 0)
    seen.seen_before("whatsapp", "edge", 10 * HOUR)
    seen.seen_before("whatsapp", "new", 10 * HOUR + W)
    assert ("whatsapp", "old") not in seen
    assert ("whatsapp", "edge") in seen  # exactly W behind the newest: still inside
    assert len(seen) == 2


def test_a_late_event_inside_the_horizon_is_remembered():
    seen = SeenEvents(horizon_ms=W)
    seen.seen_before("whatsapp", "new", W)
    assert seen.seen_before("whatsapp", "late", 1) is False
    assert seen.seen_before("whatsapp", "late", 1) is True


def test_an_event_already_beyond_the_horizon_is_not_remembered():
    seen = SeenEvents(horizon_ms=W)
    seen.seen_before("whatsapp", "new", 2 * W)
    assert seen.seen_before("whatsapp", "ancient", 0) is False
    assert ("whatsapp", "ancient") not in seen and len(seen) == 1


def test_memory_is_bounded_and_the_oldest_keys_go_first():
    seen = SeenEvents(horizon_ms=W, max_keys=100)
    for n in range(110):
        seen.seen_before("facebook", f"m_{n}", 1000 + n)
    assert len(seen) == 100
    assert seen.evicted_early == 10
    assert ("facebook", "m_9") not in seen and ("facebook", "m_10") in seen


@pytest.mark.parametrize("horizon, cap", [(0, 10), (W, 0)])
def test_a_zero_horizon_or_cap_is_refused(horizon, cap):
    with pytest.raises(ValueError):
        SeenEvents(horizon_ms=horizon, max_keys=cap)


events = st.lists(
    st.tuples(st.sampled_from(["whatsapp", "facebook"]), st.integers(0, 30), st.integers(0, 40)),
    max_size=200,
)


@settings(max_examples=300)
@given(events, st.integers(1, 50))
def test_against_a_plain_model(stream, cap):
    """Without eviction it answers as a plain dict of the keys inside the horizon; with
    eviction it may forget early, but never claims a duplicate the model does not have."""
    horizon = 10
    seen = SeenEvents(horizon_ms=horizon, max_keys=cap)
    model: dict[tuple[str, str], int] = {}
    newest = None
    for app, number, ts in stream:
        key = (app, str(number))
        newest = ts if newest is None else max(newest, ts)
        model = {k: t for k, t in model.items() if t >= newest - horizon}
        answer = seen.seen_before(app, str(number), ts)
        if answer:
            assert key in model
        if seen.evicted_early == 0:
            assert answer == (key in model)
        if key not in model and ts >= newest - horizon:
            model[key] = ts
        assert len(seen) <= cap
        assert all(remembered_ts >= newest - horizon for remembered_ts in seen._ts_by_key.values())
