"""Verified senders without a broker: the topic forms, and how the store classifies a message by
the topic it arrived on (docs/protocol.md, "Verified senders")."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swarmbus.envelope import BROADCAST, new_envelope
from swarmbus.receipts import Receipt
from swarmbus.store import Prepared
from swarmbus.topics import (
    Route,
    receipt_signer,
    receive_filters,
    route_of,
    sync_topic,
    topic_for_recipient,
)

ids = st.from_regex(r"\A[a-z0-9_-]{1,64}\Z").filter(lambda s: s not in (BROADCAST, "system"))


def payload(sender: str, to: str) -> bytes:
    return new_envelope(sender, to, "s", "b").to_wire()


@given(ids, ids)
def test_every_sent_topic_routes_back_to_its_recipient_and_sender(to: str, sender: str) -> None:
    assert route_of(topic_for_recipient(to)) == Route(to, None)
    assert route_of(topic_for_recipient(to, sender)) == Route(to, sender)
    assert route_of(topic_for_recipient(BROADCAST, sender)) == Route(BROADCAST, sender)


@given(st.text(max_size=80))
def test_route_of_any_text_is_none_or_a_valid_route(topic: str) -> None:
    route = route_of(topic)
    if route is not None:
        assert topic in (topic_for_recipient(route.recipient, route.sender),)


@pytest.mark.parametrize("topic", [
    "agents/bob/inbox/alice/x", "agents/bob/inbox/", "agents/Bob/inbox", "agents/bob/inbox/A",
    "agents/broadcast/a/b", "agents/broadcast/", "agents/bob/presence", "agents//inbox", "other/bob/inbox",
])
def test_other_topics_have_no_route(topic: str) -> None:
    assert route_of(topic) is None


def test_receivers_subscribe_to_both_forms_without_overlap() -> None:
    assert receive_filters("bob") == [("agents/bob/inbox", False), ("agents/bob/inbox/+", False),
                                      ("agents/broadcast", True), ("agents/broadcast/+", True)]


@pytest.mark.parametrize(("topic", "sender", "verify", "kind", "reason"), [
    # the topic vouches for the sender: accepted with verification on or off
    ("agents/bob/inbox/alice", "alice", True, "message", ""),
    ("agents/bob/inbox/alice", "alice", False, "message", ""),
    ("agents/broadcast/alice", "alice", True, "message", ""),
    # a sender segment that is not `from` is a spoof either way
    ("agents/bob/inbox/mallory", "alice", True, "quarantine", "spoofed sender"),
    ("agents/bob/inbox/mallory", "alice", False, "quarantine", "spoofed sender"),
    ("agents/broadcast/mallory", "alice", False, "quarantine", "spoofed sender"),
    # the plain topics: the predecessor's wire, refused only with verification on
    ("agents/bob/inbox", "alice", False, "message", ""),
    ("agents/bob/inbox", "alice", True, "quarantine", "unverified sender"),
    ("agents/broadcast", "alice", True, "quarantine", "unverified sender"),
    # misroutes keep their reasons
    ("agents/carol/inbox/alice", "alice", True, "quarantine", "not this agent's inbox"),
])
def test_the_topic_decides_whether_the_sender_is_believed(topic: str, sender: str, verify: bool, kind: str,
                                                           reason: str) -> None:
    to = BROADCAST if topic.startswith("agents/broadcast") else "bob"
    prepared = Prepared(topic, payload(sender, to), "bob", verify)
    assert prepared.kind == kind
    assert reason in prepared.reason
    if kind == "quarantine":
        assert prepared.message_id is not None  # kept with its id: `inbox --quarantined` shows which


def test_own_broadcast_echo_on_the_verified_topic_is_recognised() -> None:
    assert Prepared("agents/broadcast/bob", payload("bob", BROADCAST), "bob", True).kind == "self"


def test_receipt_topics_name_their_signer() -> None:
    assert receipt_signer("agents/alice/receipts", "alice") == (True, None)
    assert receipt_signer("agents/alice/receipts/bob", "alice") == (True, "bob")
    assert receipt_signer("agents/alice/receipts/Bob", "alice") == (False, None)
    assert receipt_signer("agents/alice/receipts/bob/x", "alice") == (False, None)
    assert receipt_signer("agents/carol/receipts/bob", "alice") == (False, None)
    assert json.loads(Receipt("m1", "stored", "bob", 1.0, "").to_wire())["by"] == "bob"


def test_sync_topics_sit_under_the_user_that_may_write_them() -> None:
    assert sync_topic("swarmbus", "alice", "bob", "t") == "swarmbus/sync/alice/t"
    assert sync_topic("swarmbus", None, "bob", "t") == "swarmbus/sync/bob/t"
    assert sync_topic("swarmbus", "not/valid", None, "t") == "swarmbus/sync/anon/t"
