"""The follow-up ledger (streams/ledger.py) on a real Redis: each move atomic, nothing re-created after an
erasure, and a field Redis lost is not taken for one."""
from __future__ import annotations

import pytest

from schemas.records import FollowupRequest
from streams.ledger import BUSY, CLAIMED, DONE, MISSING, STALE, Ledger, durability_problems, ledger_key

REQUEST = FollowupRequest("f-1", "u-1", "maestro", "whatsapp", 1_795_856_400_000, 1_795_813_200_000, 5)


@pytest.mark.kafka
async def test_ledger_claims_each_try_once(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    key = ledger_key("u-1")
    await ledger.erase(["u-1"], at=1_000)
    assert await ledger.claim(REQUEST, 0, now=0, lease_end=100, since=1_000) == MISSING  # erased after it was published
    assert await redis_client.exists(key) == 0  # never re-created
    await redis_client.hset(key, "f-1", REQUEST.due_ts)
    assert await ledger.claim(REQUEST, 0, now=0, lease_end=100) == CLAIMED
    assert await ledger.claim(REQUEST, 0, now=50, lease_end=150) == f"{BUSY}:100"
    assert await ledger.claim(REQUEST, 0, now=100, lease_end=200) == CLAIMED  # the lease ran out: a crash
    await ledger.set_state(REQUEST, "wait:1")
    assert await ledger.claim(REQUEST, 0, now=300, lease_end=400) == STALE  # the first copy again
    assert await ledger.claim(REQUEST, 1, now=300, lease_end=400) == CLAIMED
    assert await redis_client.hget(key, "f-1") == b"try:2:400"
    assert await ledger.claim(REQUEST, 0, now=300, lease_end=400) == STALE
    await ledger.set_state(REQUEST, "cancelled:killed")
    assert await ledger.claim(REQUEST, 1, now=500, lease_end=600) == DONE


@pytest.mark.kafka
async def test_a_first_try_makes_its_field_unless_the_user_was_erased_since(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    assert await ledger.claim(REQUEST, 0, now=0, lease_end=100, since=5_000) == CLAIMED  # no field yet: made
    assert await redis_client.hget(ledger_key("u-1"), "f-1") == b"try:1:100"
    assert 0 < await redis_client.ttl(ledger_key("u-1")) <= 60
    await ledger.erase(["u-1"], at=4_000)  # an erasure, then the user came back and a new request was made
    assert await redis_client.exists(ledger_key("u-1")) == 0
    assert await ledger.claim(REQUEST, 0, now=0, lease_end=100, since=5_000) == CLAIMED
    await ledger.erase(["u-1"], at=6_000)
    assert await ledger.claim(REQUEST, 0, now=0, lease_end=100, since=5_000) == MISSING
    assert await ledger.claim(REQUEST, 1, now=0, lease_end=100) == MISSING  # a retry: its field was made, then erased


@pytest.mark.kafka
async def test_sender_moves_go_on_when_redis_lost_the_field_and_stop_when_it_was_erased(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    # Redis restarted empty: no field, no tombstone. The record in hand was generated.
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == CLAIMED
    await redis_client.flushdb()  # and again, while the call ran
    assert await ledger.begin_ending(REQUEST, sending_state(1, 100), "sent", 200, "m_1") == ending_state(200, "sent")
    await redis_client.flushdb()  # and while the outcome was published: it is final anyway
    assert await ledger.finish(REQUEST, ending_state(200, "sent")) is False
    await redis_client.flushdb()
    assert await ledger.move(REQUEST, sending_state(1, 100), "retry:1") is True
    await ledger.erase(["u-1"], at=0)
    assert await ledger.claim_send(REQUEST, 1, now=0, lease_end=100) == MISSING
    assert await ledger.move(REQUEST, sending_state(1, 100), "retry:1") is False
    assert await redis_client.exists(ledger_key("u-1")) == 0


@pytest.mark.kafka
async def test_ledger_state_is_never_written_to_an_erased_ledger(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    assert await ledger.set_state(REQUEST, "generated") is False
    assert await redis_client.exists(ledger_key("u-1")) == 0
    await redis_client.hset(ledger_key("u-1"), "other", "1")
    assert await ledger.set_state(REQUEST, "generated") is False
    assert await redis_client.hget(ledger_key("u-1"), "f-1") is None


@pytest.mark.parametrize("info, problems", [
    ({"aof_enabled": 1, "maxmemory_policy": "noeviction"}, 0),
    ({"aof_enabled": 0, "maxmemory_policy": "noeviction"}, 1),
    ({"aof_enabled": 1, "maxmemory_policy": "allkeys-lru"}, 1),
    ({"aof_enabled": 0, "maxmemory_policy": "volatile-ttl"}, 2),  # the ledger's keys have a TTL
])
def test_a_redis_that_could_lose_the_ledger_is_named_so(info, problems):
    assert len(durability_problems(info)) == problems


@pytest.mark.kafka
async def test_the_local_stack_redis_keeps_the_ledger(redis_client):
    assert durability_problems(await redis_client.info()) == []


# -- the sender's moves (spec section 9: at most once) --------------------------------------

from schemas.records import Receipt  # noqa: E402
from streams.ledger import ENDING, LOST, PENDING, ending_state, final_of, sending_state  # noqa: E402


async def generated(redis_client, request: FollowupRequest = REQUEST) -> None:
    await redis_client.hset(ledger_key(request.user_id), request.followup_id, "generated")


@pytest.mark.kafka
async def test_a_lost_field_whose_call_went_out_is_unknown_and_never_sent_again(redis_client):
    """Spec section 9: a send the platform may have received is never repeated. Redis lost
    the field (no tombstone); the calls made are what Kafka kept (``streams/attempts.py``)."""
    kept = {"f-1": 1}

    async def calls_made(request):
        return kept.get(request.followup_id, 0)

    ledger = Ledger(redis_client, ttl_s=60, calls_made=calls_made)
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == f"{LOST}:1:unknown"
    assert await redis_client.hget(ledger_key("u-1"), "f-1") == ending_state(100, "unknown").encode()
    await redis_client.flushdb()
    await redis_client.hset(ledger_key("u-1"), "f-1:receipt", "sent")  # a receipt came after the wipe
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == f"{LOST}:1:sent"
    await redis_client.flushdb()
    # Call 1 was refused (its retry copy says tries=1): the retry is the first call Kafka kept nothing of.
    assert await ledger.claim_send(REQUEST, 1, now=0, lease_end=100) == CLAIMED
    await redis_client.flushdb()
    kept.clear()  # no call went out: sent as the record in hand says
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == CLAIMED
    await ledger.erase(["u-1"], at=0)
    kept["f-1"] = 1
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == MISSING  # erased: nothing re-made


@pytest.mark.kafka
async def test_a_send_is_claimed_once_and_a_copy_waits_for_the_lease(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    key = ledger_key("u-1")
    await redis_client.hset(key, "f-1", REQUEST.due_ts)
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == PENDING  # the generator is not done
    await redis_client.hset(key, "f-1", "try:1:50")
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == PENDING
    await generated(redis_client)
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == CLAIMED
    assert await redis_client.hget(key, "f-1") == sending_state(1, 100).encode()
    assert await ledger.claim_send(REQUEST, 0, now=50, lease_end=150) == f"{BUSY}:100"  # a copy, while it runs
    # The generator's late try can no longer take it back.
    assert await ledger.set_state(REQUEST, "generated") is False
    assert await ledger.claim(REQUEST, 0, now=50, lease_end=150) == DONE


@pytest.mark.kafka
async def test_a_send_whose_holder_died_is_unknown_and_never_claimed_again(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await generated(redis_client)
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == CLAIMED
    # The lease ran out: the call may have reached the platform.
    assert await ledger.claim_send(REQUEST, 0, now=100, lease_end=300) == f"{LOST}:1:unknown"
    ending = ending_state(300, "unknown")
    assert await redis_client.hget(ledger_key("u-1"), "f-1") == ending.encode()
    assert await ledger.claim_send(REQUEST, 0, now=200, lease_end=400) == f"{BUSY}:300"
    # Its outcome never published (a second crash): the next copy publishes it.
    assert await ledger.claim_send(REQUEST, 0, now=300, lease_end=500) == f"{ENDING}:unknown"
    assert await ledger.move(REQUEST, ending_state(500, "unknown"), "unknown")
    for tries in (0, 1, 2):
        assert await ledger.claim_send(REQUEST, tries, now=600, lease_end=700) == DONE


@pytest.mark.kafka
async def test_a_refused_send_is_tried_again_by_the_next_copy_only(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await generated(redis_client)
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == CLAIMED
    assert await ledger.move(REQUEST, sending_state(1, 100), "retry:1")
    assert await ledger.claim_send(REQUEST, 1, now=10, lease_end=110) == CLAIMED
    assert await ledger.move(REQUEST, sending_state(2, 110), "retry:2")
    assert await ledger.claim_send(REQUEST, 0, now=20, lease_end=120) == STALE  # two rounds old
    # The copy that made attempt 2 may claim too: the next copy might not have been published.
    assert await ledger.claim_send(REQUEST, 1, now=20, lease_end=120) == CLAIMED
    assert await ledger.claim_send(REQUEST, 2, now=30, lease_end=130) == f"{BUSY}:120"


@pytest.mark.kafka
async def test_an_ending_keeps_the_message_id_and_is_ours_alone(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await generated(redis_client)
    await ledger.claim_send(REQUEST, 0, now=0, lease_end=100)
    assert await ledger.begin_ending(REQUEST, sending_state(9, 100), "sent", 200) is None  # not our state
    ending = await ledger.begin_ending(REQUEST, sending_state(1, 100), "sent", 200, "wamid.A", sent_at=5)
    assert ending == ending_state(200, "sent") and final_of(ending) == "sent"
    assert await redis_client.hget(ledger_key("u-1"), "mid:wamid.A") is not None
    assert await ledger.move(REQUEST, ending, "sent")
    assert not await ledger.move(REQUEST, ending, "sent")  # compare and set


@pytest.mark.kafka
async def test_a_definite_answer_settles_an_unknown_declared_by_another_copy(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await redis_client.hset(ledger_key("u-1"), "f-1", "unknown")
    assert await ledger.begin_ending(REQUEST, sending_state(1, 100), "unknown", 200) is None
    assert await ledger.begin_ending(REQUEST, sending_state(1, 100), "sent", 200) == ending_state(200, "sent")


@pytest.mark.kafka
async def test_sender_moves_never_recreate_an_erased_ledger(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await ledger.erase(["u-1"], at=0)
    assert await ledger.claim_send(REQUEST, 0, now=0, lease_end=100) == MISSING
    assert await ledger.begin_ending(REQUEST, sending_state(1, 100), "sent", 200, "m_1") is None
    assert await ledger.receipt_outcomes([Receipt("whatsapp", "read", "u-1", "maestro", 0, followup_id="f-1")], apply=True) == [[]]
    assert await redis_client.exists(ledger_key("u-1")) == 0


# -- receipts (spec section 9, "Receipts back") ----------------------------------------------

FB = FollowupRequest("f-2", "u-1", "maestro", "facebook", 1_795_856_400_000, 1_795_813_200_000, 5)


async def sent(ledger: Ledger, redis_client, request: FollowupRequest, mid: str, at: int) -> None:
    await generated(redis_client, request)
    assert await ledger.claim_send(request, 0, now=0, lease_end=100) == CLAIMED
    ending = await ledger.begin_ending(request, sending_state(1, 100), "sent", 200, mid, sent_at=at)
    assert await ledger.move(request, ending, "sent")


async def steps(ledger: Ledger, *receipts: Receipt) -> list[list[tuple[str, str]]]:
    """What the receipts add to the stories, then recorded, as ingest does."""
    found = await ledger.receipt_outcomes(list(receipts), apply=False)
    await ledger.receipt_outcomes(list(receipts), apply=True)
    return found


@pytest.mark.kafka
async def test_each_receipt_adds_its_step_once_and_never_goes_back(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await sent(ledger, redis_client, REQUEST, "wamid.A", 1000)

    def status(kind: str) -> Receipt:
        return Receipt("whatsapp", kind, "u-1", "maestro", 2000, followup_id="f-1", mids=("wamid.A",))

    assert await steps(ledger, status("sent")) == [[]]  # the sender already said so
    assert await steps(ledger, status("read")) == [[("f-1", "read")]]  # out of order: read first
    assert await steps(ledger, status("delivered"), status("read")) == [[], []]  # nothing after read
    assert await steps(ledger, status("failed")) == [[]]  # it was read: it did not fail
    assert await redis_client.hget(ledger_key("u-1"), "f-1") == b"sent"


@pytest.mark.kafka
async def test_a_receipt_settles_an_unknown_send(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await redis_client.hset(ledger_key("u-1"), "f-1", "unknown")
    echo = Receipt("facebook", "sent", "u-1", "maestro", 2000, followup_id="f-1")
    assert await steps(ledger, echo) == [[("f-1", "sent")]]
    assert await redis_client.hget(ledger_key("u-1"), "f-1") == b"sent"
    assert await steps(ledger, echo) == [[]]  # the platform re-sends webhooks


@pytest.mark.kafka
async def test_a_receipt_during_the_call_makes_a_lost_send_sent_not_unknown(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await generated(redis_client)
    await ledger.claim_send(REQUEST, 0, now=0, lease_end=100)
    delivered = Receipt("whatsapp", "delivered", "u-1", "maestro", 50, followup_id="f-1")
    assert await steps(ledger, delivered) == [[("f-1", "delivered")]]
    assert await ledger.claim_send(REQUEST, 0, now=100, lease_end=300) == f"{LOST}:1:sent"


@pytest.mark.kafka
async def test_an_answer_lost_after_a_receipt_came_is_sent(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await generated(redis_client)
    await ledger.claim_send(REQUEST, 0, now=0, lease_end=100)
    await steps(ledger, Receipt("facebook", "sent", "u-1", "maestro", 50, followup_id="f-1"))  # the echo, first
    assert await ledger.begin_ending(REQUEST, sending_state(1, 100), "unknown", 200) == ending_state(200, "sent")


@pytest.mark.kafka
async def test_messenger_receipts_find_their_followup_by_message_id_or_watermark(redis_client):
    ledger = Ledger(redis_client, ttl_s=60)
    await sent(ledger, redis_client, FB, "m_A", at=1000)
    later = FollowupRequest("f-3", "u-1", "maestro", "facebook", 1_795_900_000_000, 1_795_850_000_000, 5)
    await sent(ledger, redis_client, later, "m_B", at=5000)
    other_bot = FollowupRequest("f-4", "u-1", "chef-lucie", "facebook", 1, 0, 5)
    await sent(ledger, redis_client, other_bot, "m_C", at=1000)

    delivery = Receipt("facebook", "delivered", "u-1", "maestro", 6000, mids=("m_A", "m_unknown"))
    assert await steps(ledger, delivery) == [[("f-2", "delivered")]]
    read = Receipt("facebook", "read", "u-1", "maestro", 6000, watermark=4999)  # before f-3 was sent
    assert await steps(ledger, read) == [[("f-2", "read")]]
    read_all = Receipt("facebook", "read", "u-1", "maestro", 7000, watermark=5000)
    assert await steps(ledger, read_all) == [[("f-3", "read")]]  # f-2 already read; f-4 is another bot's
    foreign = Receipt("facebook", "delivered", "u-1", "maestro", 7000, mids=("m_C",))
    assert await steps(ledger, foreign) == [[]]


@pytest.mark.kafka
async def test_the_first_receipt_of_an_unknown_send_settles_it_once_even_while_it_is_ending(redis_client):
    # Spec section 9: an unknown send is settled by its receipt or echo when one comes.
    ledger = Ledger(redis_client, ttl_s=60)
    await generated(redis_client)
    await ledger.claim_send(REQUEST, 0, now=0, lease_end=100)
    assert await ledger.claim_send(REQUEST, 0, now=100, lease_end=300) == f"{LOST}:1:unknown"
    ending = ending_state(300, "unknown")  # its outcome on the way when the receipts come
    delivered = Receipt("whatsapp", "delivered", "u-1", "maestro", 50, followup_id="f-1")
    assert await steps(ledger, delivered) == [[("f-1", "sent"), ("f-1", "delivered")]]
    assert await ledger.finish(REQUEST, ending)
    assert await redis_client.hget(ledger_key("u-1"), "f-1") == b"sent"
    sent_status = Receipt("whatsapp", "sent", "u-1", "maestro", 40, followup_id="f-1")
    assert await steps(ledger, sent_status, delivered) == [[], []]  # settled once, never again
    assert not await ledger.finish(REQUEST, ending)  # compare and set
