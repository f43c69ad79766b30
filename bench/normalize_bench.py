"""How fast one core turns native webhooks into canonical events.

Builds N webhook documents per app (from the test fixtures, with fresh ids and times),
then times, over the same bytes, side by side:

- ``orjson.loads`` alone: the floor, what decoding the JSON costs;
- ``normalize_webhook``: decoding, the mapping, the registry lookup and the checks;
- with ``--serialize``, also ``MessageEvent.to_json()`` of every event, as the ingest
  agent wrote them before the compiled path;
- ``normalize_encoded``: what the ingest agent calls, events encoded (the compiled path
  for the common shapes, msgspec Structs; ``normalize_webhook`` for the rest).

Run: ``.venv/bin/python -m bench.normalize_bench --num 20000``
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import orjson

from domain.normalize import normalize_encoded, normalize_webhook
from schemas.registry import BotRegistry

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
TEMPLATES = {"whatsapp": "whatsapp_text", "facebook": "facebook_text", "instagram": "instagram_text"}


def build_documents(app: str, count: int, per_doc: int) -> list[bytes]:
    """``count`` webhooks of ``app``, each holding ``per_doc`` messages with unique ids."""
    template = orjson.loads((FIXTURES / f"{TEMPLATES[app]}.json").read_bytes())
    documents = []
    for n in range(count):
        document = copy.deepcopy(template)
        messages = _messages(app, document)
        model = messages[0]
        messages[:] = [_variant(app, model, n * per_doc + k) for k in range(per_doc)]
        documents.append(orjson.dumps(document))
    return documents


def _messages(app: str, document: dict) -> list:
    entry = document["entry"][0]
    return entry["changes"][0]["value"]["messages"] if app == "whatsapp" else entry["messaging"]


def _variant(app: str, model: dict, number: int) -> dict:
    item = copy.deepcopy(model)
    if app == "whatsapp":
        item["id"] = f"wamid.bench{number:012d}"
        item["from"] = str(16505550000 + number % 5000)
        item["timestamp"] = str(1795858200 + number)
    else:
        item["message"]["mid"] = f"m_bench{number:012d}"
        item["sender"]["id"] = str(6945510000000000 + number % 5000)
        item["timestamp"] = 1795858200000 + number
    return item


def time_best(function, documents, repeat: int, timer=time.perf_counter) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = timer()
        function(documents)
        best = min(best, timer() - started)
    return best


def decode_only(documents):
    loads = orjson.loads
    for document in documents:
        loads(document)


def make_normalize(app: str, registry: BotRegistry, serialize: bool):
    def normalize_all(documents):
        for document in documents:
            result = normalize_webhook(app, document, registry)
            if serialize:
                for event in result.events:
                    event.to_json()
    return normalize_all


def make_encoded(app: str, registry: BotRegistry):
    def encode_all(documents):
        for document in documents:
            normalize_encoded(app, document, registry)
    return encode_all


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=20_000, help="webhook documents per app")
    parser.add_argument("--per-doc", type=int, default=1, help="messages in each document")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measure; the best counts")
    parser.add_argument("--serialize", action="store_true", help="also write every event with to_json()")
    args = parser.parse_args(argv)

    registry = BotRegistry.load(ROOT / "deploy" / "bots.toml")
    print(f"{args.num} documents per app, {args.per_doc} message(s) each, best of {args.repeat}, one core"
          + (", events serialised" if args.serialize else ""))
    print(f"{'app':<10} {'bytes/doc':>9} {'orjson.loads docs/s':>20} {'normalize docs/s':>17} "
          f"{'events/s':>10} {'ratio':>6} {'normalize_encoded docs/s':>25}")
    for app in ("whatsapp", "facebook", "instagram"):
        documents = build_documents(app, args.num, args.per_doc)
        size = sum(map(len, documents)) // len(documents)
        decode = time_best(decode_only, documents, args.repeat)
        normalize = time_best(make_normalize(app, registry, args.serialize), documents, args.repeat)
        encoded = time_best(make_encoded(app, registry), documents, args.repeat)
        docs_per_s = args.num / normalize
        print(f"{app:<10} {size:>9} {args.num / decode:>20,.0f} {docs_per_s:>17,.0f} "
              f"{docs_per_s * args.per_doc:>10,.0f} {normalize / decode:>5.1f}x {args.num / encoded:>25,.0f}")


if __name__ == "__main__":
    main()
