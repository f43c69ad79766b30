"""The topic catalog: every topic Relance reads or writes, named here and nowhere else."""
from __future__ import annotations

from dataclasses import dataclass

from schemas.records import ControlEvent, Kill, Tick

DAY_MS = 86_400_000
# Event mode over Kafka: the feeder stamps each record of `messages` with the stream's clock (ms).
CLOCK_HEADER = "relance-clock"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    doc: str
    keyed: bool = True          # keyed by user_id, so it has the catalog's partition count
    compacted: bool = False     # a changelog keeps the latest value per key
    retention_ms: int | None = 7 * DAY_MS
    # Holds what people wrote or are sent (message text, webhook bodies): its retention is
    # bounded, and it is what an erasure cannot reach before retention runs (README, Least data).
    carries_text: bool = False

    def config(self) -> dict[str, str]:
        config = {"cleanup.policy": "compact" if self.compacted else "delete"}
        if self.retention_ms is not None and not self.compacted:
            config["retention.ms"] = str(self.retention_ms)
        return config


# Raw webhooks: ingest reads them within seconds; 3 days outlast a long weekend's outage.
RAW_WHATSAPP = TopicSpec("raw.whatsapp", "WhatsApp Business Cloud API webhooks, as posted.", keyed=False,
                         retention_ms=3 * DAY_MS, carries_text=True)
RAW_FACEBOOK = TopicSpec("raw.facebook", "Messenger Platform webhooks, as posted.", keyed=False,
                         retention_ms=3 * DAY_MS, carries_text=True)
RAW_INSTAGRAM = TopicSpec("raw.instagram", "Instagram Messaging webhooks, as posted.", keyed=False,
                          retention_ms=3 * DAY_MS, carries_text=True)
# 21 days: the window W (14 days) and a week, what `relance report` and `explain` read back.
MESSAGES = TopicSpec("messages", "Canonical message events, key user_id.", retention_ms=21 * DAY_MS, carries_text=True)
CONTROL = TopicSpec("control", "Profiles, opt-outs, kills, erasures and ticks.", retention_ms=None, compacted=False)
FOLLOWUPS_REQUESTED = TopicSpec("followups.requested", "Follow-ups the rules allow, key user_id.")
FOLLOWUPS_RETRY = TopicSpec("followups.retry", "Follow-ups whose generation failed, waiting for another try.")
FOLLOWUP_OUTCOMES = TopicSpec("followups.outcomes", "Each follow-up's story: generated or ended before, then sent, delivered, read.")
DECISIONS = TopicSpec("decisions", "A record of every decision, sent or not, key user_id.", retention_ms=30 * DAY_MS)
DELIVERY_WHATSAPP = TopicSpec("delivery.whatsapp", "Generated follow-ups for the WhatsApp Cloud API.", carries_text=True)
DELIVERY_FACEBOOK = TopicSpec("delivery.facebook", "Generated follow-ups for the Messenger Send API.", carries_text=True)
DELIVERY_INSTAGRAM = TopicSpec("delivery.instagram", "Generated follow-ups for Instagram Messaging.", carries_text=True)
DELIVERY_RETRY = TopicSpec("delivery.retry", "Follow-ups waiting for another send: a retryable refusal, a rate limit, a refused token.",
                           carries_text=True)
# Every send-API call, written before it goes out: what a sender finds when Redis lost a
# follow-up's field. Kept past the messaging window (24 h), after which no copy is sent.
# Not compacted: keyed by user, compaction would keep only each user's latest call.
FOLLOWUPS_ATTEMPTS = TopicSpec("followups.attempts", "Send-API calls about to go out, key user_id: never repeated once made.",
                               retention_ms=2 * DAY_MS)
ENGINE_STATE = TopicSpec("engine.state", "The engine's users per partition (changelog), key user_id.", compacted=True, retention_ms=None)
# Dead letters keep the original bytes (a webhook's text, say): two weeks to look at them.
DEADLETTER = TopicSpec("deadletter", "Records that could not be used, with the reason.", keyed=False,
                       retention_ms=14 * DAY_MS, carries_text=True)

RAW_BY_APP = {"whatsapp": RAW_WHATSAPP, "facebook": RAW_FACEBOOK, "instagram": RAW_INSTAGRAM}
DELIVERY_BY_APP = {"whatsapp": DELIVERY_WHATSAPP, "facebook": DELIVERY_FACEBOOK, "instagram": DELIVERY_INSTAGRAM}

CATALOG: tuple[TopicSpec, ...] = (
    RAW_WHATSAPP, RAW_FACEBOOK, RAW_INSTAGRAM, MESSAGES, CONTROL, FOLLOWUPS_REQUESTED,
    FOLLOWUPS_RETRY, FOLLOWUP_OUTCOMES, DECISIONS, DELIVERY_WHATSAPP, DELIVERY_FACEBOOK,
    DELIVERY_INSTAGRAM, DELIVERY_RETRY, FOLLOWUPS_ATTEMPTS, ENGINE_STATE, DEADLETTER,
)


def topic_name(spec: TopicSpec, prefix: str = "") -> str:
    """The topic's name on the broker; a prefix lets tests and demos share one broker."""
    return prefix + spec.name


def routes_on_messages(record: ControlEvent, partitions: int) -> list[tuple[bytes | None, int | None]]:
    """Where a control record travels on ``messages``, as (key, partition), so that every
    engine partition sees it in its one order: kill switches and ticks concern everyone and
    go to every partition; the others, like messages, to their user's (by key)."""
    if isinstance(record, (Kill, Tick)):
        return [(None, partition) for partition in range(partitions)]
    return [(record.user_id.encode(), None)]
