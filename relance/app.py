"""The composition root: one worker's stages, chosen by role, on one shared wiring.

Every import points down: each role's stage module in ``agents/`` offers ``install``, and
registers on the wiring what it consumes and serves (the engine its ``/explain`` page).
"""
from __future__ import annotations

from typing import Callable

from agents import context, engine, generator, ingest, sender
from foundation.settings import Settings
from streams.wiring import Wiring, new_wiring

INSTALLERS: dict[str, Callable[[Wiring], None]] = {
    "ingest": ingest.install,
    "engine": engine.install,
    "context": context.install,
    "generator": generator.install,
    "sender": sender.install,
}
ROLES = tuple(INSTALLERS)


def build(settings: Settings, roles: tuple[str, ...] = ROLES) -> Wiring:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(ROLES)}")
    wiring = new_wiring(settings)
    for role in roles:
        INSTALLERS[role](wiring)
    return wiring
