"""Recipients: the compacted ``herald.contacts`` topic read into memory, kept current by a thread.

The book reads every partition from the beginning at start-up (``wait_ready`` returns once it has reached
the end offsets seen then), then follows new records: a contact written to the topic is used by the next
request, typically within a second (the poll waits at most ``poll_s``). A null value (tombstone) forgets
the user. A record that does not decode is skipped (the API and producers validate contacts; a sink must
not stop on one). ``update`` writes a changed contact back to the topic (push: a token FCM calls
UNREGISTERED) and uses it at once.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from herald.kafka import client_config, make_producer, produce
from herald.settings import Settings
from schemas.codec import Codec, DecodeError

log = logging.getLogger("herald.sink.contacts")


class ContactBook:
    def __init__(self, settings: Settings, codec: Codec, poll_s: float = 0.5) -> None:
        self.settings = settings
        self.codec = codec
        self.topic = settings.topic("contacts")
        self.poll_s = poll_s
        # user_id -> (email, phone, push_tokens, locale, updated_at): a tuple is a third of a dict's size,
        # and every sink process holds every user's contact
        self.contacts: dict[str, tuple] = {}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer = None

    def get(self, user_id: str) -> dict | None:
        """The user's ``herald.Contact`` as a dict, or None when the topic has none."""
        found = self.contacts.get(user_id)
        if found is None:
            return None
        email, phone, tokens, locale, updated_at = found
        return {"user_id": user_id, "email": email, "phone": phone, "push_tokens": list(tokens), "locale": locale,
                "updated_at": updated_at}

    def _keep(self, contact: dict) -> None:
        self.contacts[contact["user_id"]] = (contact.get("email"), contact.get("phone"),
                                             tuple(contact.get("push_tokens") or ()), contact.get("locale"),
                                             contact.get("updated_at"))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="herald-contacts", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        if self._producer is not None:
            self._producer.flush(5)

    def update(self, contact: dict) -> None:
        """Write ``contact`` (a whole ``herald.Contact``) to the topic and use it from now on."""
        contact = {**contact, "updated_at": int(time.time() * 1000)}
        self._keep(contact)
        if self._producer is None:
            self._producer = make_producer(self.settings)
        value = self.codec.encode(f"{self.topic}-value", "Contact", contact)
        produce(self._producer, self.topic, value, contact["user_id"].encode())
        self._producer.poll(0)

    def _run(self) -> None:
        consumer = Consumer({**client_config(self.settings),
                             "group.id": f"herald-contacts-{uuid.uuid4().hex}", "enable.auto.commit": False,
                             "enable.partition.eof": True})
        try:
            ends = self._assign(consumer)
            while not self._stop.is_set():
                msg = consumer.poll(self.poll_s)
                if msg is None:
                    if ends is None:
                        ends = self._assign(consumer)
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        if ends is not None:
                            ends.pop(msg.partition(), None)
                            if not ends:
                                self._ready.set()
                    continue
                if ends is not None and msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
                    if not ends:
                        self._ready.set()
                self._apply(msg)
        except Exception:  # noqa: BLE001 - logged; the sink then sees no new contacts but keeps running
            log.exception("contacts reader stopped")
        finally:
            consumer.close()

    def _assign(self, consumer: Consumer) -> dict[int, int] | None:
        """Assign every partition from the beginning; the end offsets to reach. None when the topic is not
        there yet (then the book is ready, empty, and tries again)."""
        try:
            meta = consumer.list_topics(self.topic, timeout=10)
            topic = meta.topics.get(self.topic)
            if topic is not None and topic.error is None and topic.partitions:
                parts = sorted(topic.partitions)
                marks = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10) for p in parts}
        except Exception:  # noqa: BLE001 - the broker is away: try again on the next poll
            return None
        if topic is None or topic.error is not None or not topic.partitions:
            self._ready.set()
            return None
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
        ends = {p: high for p, (low, high) in marks.items() if high > low}
        if not ends:
            self._ready.set()
        return ends

    def _apply(self, msg) -> None:
        key = msg.key().decode(errors="replace") if msg.key() else None
        if msg.value() is None:
            if key:
                self.contacts.pop(key, None)
            return
        while True:
            try:
                contact = self.codec.decode(msg.value(), "Contact")
                break
            except DecodeError as exc:
                log.warning("contacts: skipped a record at %s/%s: %s", msg.partition(), msg.offset(), exc.reason)
                return
            except Exception as exc:  # noqa: BLE001 - the registry away: this record waits for it
                log.warning("contacts: cannot decode yet (%s); again in 1s", type(exc).__name__)
                if self._stop.wait(1.0):
                    return
        self._keep(contact)
