"""The task board without a broker: its wire format (property-based: every parser is total, every
message round-trips) and its two state machines on a real board database, driven the way the
daemons drive them, including racing claimers, stale fences and expired leases.

The end-to-end behaviour on real daemons is in tests/test_tasks.py.
"""

from __future__ import annotations

import contextlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarmbus.board import arbiter, claimer
from swarmbus.board.effects import Effects
from swarmbus.board.ledger import Ledger
from swarmbus.board.wire import (
    MANY,
    NONE,
    STATE_FILTER,
    Offer,
    TaskMessage,
    TaskSpec,
    TaskWireError,
    ineligible,
    offer_filters,
    offer_topic,
    parse_message,
    parse_offer,
    parse_state,
    state_topic,
)

NAMES = st.from_regex(r"\A[a-z0-9_-]{1,12}\Z", fullmatch=True)
TASK_IDS = NAMES.filter(lambda s: s != "_offer")
TYPES = st.from_regex(r"\A[a-z0-9][a-z0-9._-]{0,20}\Z", fullmatch=True)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
STAMP = "2026-11-27T00:00:00+00:00"


# -- the parsers are total ------------------------------------------------------------------------------
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_parse_message_is_total(data: bytes) -> None:
    with contextlib.suppress(TaskWireError):
        parse_message(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["v", "op", "task_id", "fence", "attempt", "result", "error", "final", "of",
                                        "reason", "state", "task", "role", "capabilities", "swarm", "lease_until"]),
                       JSON_VALUES | st.sampled_from(["claim", "grant", "refuse", "ack", "complete", "fail", "renew",
                                                      1, "t-1", STAMP]), max_size=10))
def test_parse_message_is_total_on_near_misses(data: dict[str, Any]) -> None:
    """Objects with the right keys and arbitrary values: a message or a TaskWireError."""
    data.setdefault("v", 1)
    try:
        message = parse_message(json.dumps(data))
    except TaskWireError:
        return
    assert parse_message(message.encode()) == message


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80), st.binary(max_size=300))
def test_parse_offer_and_state_are_total(topic: str, payload: bytes) -> None:
    for parse in (parse_offer, parse_state):
        with contextlib.suppress(TaskWireError):
            parse(topic, payload)


def _specs() -> st.SearchStrategy[TaskSpec]:
    return st.builds(TaskSpec, task_id=TASK_IDS, type=TYPES, owner=NAMES, payload=JSON_VALUES,
                     role=st.none() | NAMES, capabilities=st.lists(NAMES, max_size=3, unique=True).map(lambda c: tuple(sorted(c))),
                     swarm=st.none() | NAMES, lease=st.floats(0.5, 86_400), max_attempts=st.integers(1, 100),
                     priority=st.sampled_from(["low", "normal", "high"]), created_at=st.just(STAMP))


def _messages() -> st.SearchStrategy[TaskMessage]:
    fence = st.integers(1, 2**53)
    attempt = st.integers(1, 100)
    caps = st.lists(NAMES, max_size=3, unique=True).map(lambda c: tuple(sorted(c)))
    text = st.text(max_size=50)
    state = st.sampled_from(["open", "claimed", "completed", "failed"])
    return st.one_of(
        st.builds(TaskMessage, op=st.just("claim"), task_id=TASK_IDS, attempt=attempt, role=st.none() | NAMES,
                  capabilities=caps, swarm=st.none() | NAMES),
        st.builds(TaskMessage, op=st.just("renew"), task_id=TASK_IDS, fence=fence),
        st.builds(TaskMessage, op=st.just("complete"), task_id=TASK_IDS, fence=fence, result=JSON_VALUES),
        st.builds(TaskMessage, op=st.just("fail"), task_id=TASK_IDS, fence=fence, error=text, final=st.booleans()),
        _specs().flatmap(lambda spec: st.builds(TaskMessage, op=st.just("grant"), task_id=st.just(spec.task_id),
                                                 fence=fence, attempt=attempt, lease_until=st.just(STAMP),
                                                 task=st.just(spec))),
        st.builds(TaskMessage, op=st.just("refuse"), task_id=TASK_IDS, fence=st.none() | fence,
                  of=st.sampled_from(["claim", "renew", "complete", "fail"]), reason=text, state=st.none() | state,
                  attempt=st.none() | attempt),
        st.builds(TaskMessage, op=st.just("ack"), task_id=TASK_IDS, fence=fence, of=st.sampled_from(["complete", "fail"]),
                  state=state),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_messages())
def test_messages_round_trip(message: TaskMessage) -> None:
    assert parse_message(message.encode()) == message
    assert parse_message(message.encode().encode("utf-8")) == message


@settings(max_examples=200)
@given(TASK_IDS, NAMES, TYPES, st.none() | NAMES, st.lists(NAMES, max_size=3, unique=True), st.none() | NAMES,
       st.integers(1, 100))
def test_offers_round_trip_and_are_bound_to_their_topic(task_id: str, owner: str, task_type: str, role: str | None,
                                                        caps: list[str], swarm: str | None, attempt: int) -> None:
    offer = Offer(task_id, owner, task_type, role, tuple(sorted(caps)), swarm, attempt, 60.0, STAMP)
    payload = json.dumps(offer.to_json()).encode()
    assert parse_offer(offer.topic, payload) == offer
    with pytest.raises(TaskWireError):  # published under someone else's id, or in another pool
        parse_offer(offer_topic(swarm, role, caps, owner + "x"), payload)
    # an agent that may take the task is subscribed to exactly the topic the offer is on
    agent_caps = [*caps, "extra"]
    filters = offer_filters(swarm, role or "somerole", agent_caps)
    assert ineligible(role, caps, swarm, role or "somerole", agent_caps, swarm) is None
    assert sum(_matches(f, offer.topic) for f in filters) == 1


def _matches(topic_filter: str, topic: str) -> bool:
    f, t = topic_filter.split("/"), topic.split("/")
    return len(f) == len(t) and all(a in ("+", b) for a, b in zip(f, t, strict=True))


def test_offer_topics_by_pool() -> None:
    assert offer_topic(None, None, [], "p") == f"swarmbus/tasks/_offer/{NONE}/{NONE}/{NONE}/p"
    assert offer_topic("ci", "rev", ["py"], "p") == "swarmbus/tasks/_offer/ci/rev/py/p"
    assert offer_topic("ci", "rev", ["py", "go"], "p") == f"swarmbus/tasks/_offer/ci/rev/{MANY}/p"
    assert not _matches(STATE_FILTER, offer_topic("ci", "state", ["py"], "p"))  # never mistaken for a state record
    assert offer_filters(None, None, []) == [f"swarmbus/tasks/_offer/{NONE}/{NONE}/{NONE}/+",
                                             f"swarmbus/tasks/_offer/{NONE}/{NONE}/{MANY}/+"]
    assert len(offer_filters("s", "r", [f"c{i}" for i in range(32)])) == 2 * 34


def test_eligibility() -> None:
    assert ineligible("rev", ["py"], "ci", "rev", ["py", "go"], "ci") is None
    assert ineligible(None, [], None, "anything", [], None) is None
    assert "role rev" in (ineligible("rev", [], None, "tester", [], None) or "")
    assert "lacks capability gpu" in (ineligible(None, ["gpu", "py"], None, None, ["py"], None) or "")
    assert "swarm ci" in (ineligible(None, [], "ci", None, [], "other") or "")
    assert ineligible(None, [], None, None, [], "ci") is not None  # a swarm's agent takes only its swarm's tasks


def test_state_record_checks_its_topic() -> None:
    record = {"task_id": "t-1", "type": "a.b", "owner": "p", "state": "open", "claimer": None, "fence": 0,
              "attempt": 1, "max_attempts": 3, "v": 1}
    assert parse_state(state_topic("t-1", "p"), json.dumps(record).encode())["state"] == "open"
    for topic in (state_topic("t-2", "p"), state_topic("t-1", "q"), "swarmbus/tasks/t-1/state"):
        with pytest.raises(TaskWireError):
            parse_state(topic, json.dumps(record).encode())
    with pytest.raises(TaskWireError):
        parse_state(state_topic("t-1", "p"), b"")


# -- the state machines on a real database ---------------------------------------------------------------
class Wire:
    """One arbiter's database and the claimers' databases, with the messages between them
    delivered by hand, in any order the test likes (it remembers who sent each one)."""

    def __init__(self, tmp: Path, claimers: list[str], *, lease: float = 10.0, max_attempts: int = 3) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.arbiter = Ledger(tmp / "arbiter.sqlite3")
        self.claimers = {name: Ledger(tmp / f"{name}.sqlite3") for name in claimers}
        self.lease, self.max_attempts = lease, max_attempts
        self.now = 1000.0
        self.inboxes: dict[str, list[TaskMessage]] = {name: [] for name in ["poster", *claimers]}
        self._from: dict[int, str] = {}

    def _deliver(self, ledger: Ledger, sender: str) -> None:
        for row in ledger.pending_outbound():
            message = parse_message(row["body"])
            self._from[id(message)] = sender
            self.inboxes[row["to_agent"]].append(message)
        ledger.write(lambda db: db.execute("UPDATE outbound SET spooled_at = 1 WHERE spooled_at IS NULL"))

    def post(self, task_id: str = "t-1", role: str | None = "worker") -> Offer:
        spec = TaskSpec(task_id, "demo.work", "poster", {"n": 1}, role, (), None, self.lease, self.max_attempts,
                        "high", STAMP)
        fx = Effects()
        self.arbiter.write(lambda db: (arbiter.post(db, fx, spec, self.now),
                                       arbiter.offer_due(db, fx, self.now, 1.0, 10.0)))
        [offer] = fx.offers
        return offer

    def claim(self, name: str, offer: Offer, role: str | None = "worker") -> None:
        fx = Effects()
        self.claimers[name].write(lambda db: claimer.claim(db, fx, offer, False, role, (), None, self.now))
        self._deliver(self.claimers[name], name)

    def arbiter_step(self, sender: str, message: TaskMessage) -> None:
        fx = Effects()
        fn = {"claim": arbiter.claim, "renew": arbiter.renew, "complete": arbiter.complete, "fail": arbiter.fail}
        self.arbiter.write(lambda db: fn[message.op](db, fx, sender, message, self.now))
        self._deliver(self.arbiter, "poster")

    def claimer_step(self, name: str, message: TaskMessage) -> None:
        fx = Effects()
        ledger = self.claimers[name]

        def write(db: Any) -> None:
            if message.op == "grant":
                claimer.grant(db, fx, "poster", message, False, self.now)
            elif message.op == "refuse":
                claimer.refused(db, fx, "poster", message, self.now)
            else:
                claimer.acked(db, fx, "poster", message, self.now)

        ledger.write(write)

    def flush(self) -> None:
        """Deliver every queued message, the arbiter's inbox first, until none is left."""
        while any(self.inboxes.values()):
            arbiter_in, self.inboxes["poster"] = self.inboxes["poster"], []
            for message in arbiter_in:
                self.arbiter_step(self._sender_of(message), message)
            for name in self.claimers:
                inbox, self.inboxes[name] = self.inboxes[name], []
                for message in inbox:
                    self.claimer_step(name, message)

    def _sender_of(self, message: TaskMessage) -> str:
        return self._from[id(message)]

    def finish(self, name: str, task_id: str = "t-1", **kwargs: Any) -> str | None:
        fx = Effects()
        why = self.claimers[name].write(lambda db: claimer.finish(db, fx, ("poster", task_id), self.now, **kwargs))
        self._deliver(self.claimers[name], name)
        return why

    def expire(self) -> None:
        fx = Effects()
        self.arbiter.write(lambda db: arbiter.expire(db, fx, self.now))

    def events(self, task_id: str = "t-1") -> list[tuple[str, str | None, int | None]]:
        return [(e.event, e.by, e.fence) for e in self.arbiter.events(task_id)]



@pytest.mark.parametrize("seed", range(8))
def test_racing_claims_are_granted_exactly_once(tmp_path: Path, seed: int) -> None:
    names = [f"w{i}" for i in range(5)]
    board = Wire(tmp_path, names)
    offer = board.post()
    rng = random.Random(seed)
    for name in rng.sample(names, len(names)):
        board.claim(name, offer)
    rng.shuffle(board.inboxes["poster"])  # the broker may deliver the claims in any order
    first = board._from[id(board.inboxes["poster"][0])]
    board.flush()
    row = board.arbiter.task("t-1")
    assert row is not None and (row.state, row.claimer, row.fence) == ("claimed", first, 1)
    states = {name: board.claimers[name].work("poster", "t-1").state for name in names}  # type: ignore[union-attr]
    assert states == {name: "running" if name == first else "refused" for name in names}
    assert [e for e in board.events() if e[0] == "granted"] == [("granted", first, 1)]
    assert sum(1 for e in board.events() if e[0] == "refused claim") == len(names) - 1


def test_stale_fence_is_refused_after_the_lease_expired(tmp_path: Path) -> None:
    board = Wire(tmp_path, ["a", "b"], lease=1.0)
    offer = board.post()
    board.claim("a", offer)
    board.flush()
    board.now += 2.0  # a is paused: no renewal
    board.expire()
    row = board.arbiter.task("t-1")
    assert row is not None and (row.state, row.attempt, row.claimer) == ("open", 2, None)
    fx = Effects()
    board.arbiter.write(lambda db: arbiter.offer_due(db, fx, board.now, 1.0, 10.0))
    board.claim("b", fx.offers[0])
    board.flush()
    assert board.finish("a", result={"late": True}) is None  # a does not know yet: it sends its completion
    board.flush()
    work_a = board.claimers["a"].work("poster", "t-1")
    assert work_a is not None and work_a.state == "lost"
    assert "stale fence 1" in (work_a.answer or "") and "claimed by b with fence 2" in (work_a.answer or "")
    assert board.finish("b", result={"ok": True}) is None
    board.flush()
    row = board.arbiter.task("t-1")
    assert row is not None and (row.state, row.claimer, row.fence, row.result) == ("completed", "b", 2, {"ok": True})
    assert [e for e in board.events() if e[0] == "completed"] == [("completed", "b", 2)]
    # the claimer knows it lost the task: a second completion is not even sent
    assert "stale fence" in (board.finish("a", result=1) or "")


def test_renewals_keep_the_lease_and_a_lost_one_cancels(tmp_path: Path) -> None:
    board = Wire(tmp_path, ["a"], lease=1.0)
    board.claim("a", board.post())
    board.flush()
    for _ in range(5):
        board.now += 0.5
        board.inboxes["poster"].append(TaskMessage("renew", "t-1", fence=1))
        board._from[id(board.inboxes["poster"][-1])] = "a"
        board.flush()
        board.expire()
    row = board.arbiter.task("t-1")
    assert row is not None and row.state == "claimed" and row.lease_until == board.now + 1.0
    board.now += 1.5
    board.expire()
    renewal = TaskMessage("renew", "t-1", fence=1)
    board.inboxes["poster"].append(renewal)
    board._from[id(renewal)] = "a"
    board.flush()
    work = board.claimers["a"].work("poster", "t-1")
    assert work is not None and work.state == "lost" and "renew refused" in (work.answer or "")


def test_failures_retry_until_max_attempts(tmp_path: Path) -> None:
    board = Wire(tmp_path, ["a"], max_attempts=2)
    board.claim("a", board.post())
    board.flush()
    assert board.finish("a", error="boom") is None
    board.flush()
    row = board.arbiter.task("t-1")
    assert row is not None and (row.state, row.attempt, row.error) == ("open", 2, "a: boom")
    fx = Effects()
    board.arbiter.write(lambda db: arbiter.offer_due(db, fx, board.now, 1.0, 10.0))
    board.claim("a", fx.offers[0])
    board.flush()
    assert board.finish("a", error="boom again") is None
    board.flush()
    row = board.arbiter.task("t-1")
    assert row is not None and (row.state, row.attempt, row.fence) == ("failed", 2, 2)
    assert board.claimers["a"].work("poster", "t-1").answer == "fail accepted: the task is failed"  # type: ignore[union-attr]


def test_final_failure_and_expiry_of_the_last_attempt(tmp_path: Path) -> None:
    board = Wire(tmp_path, ["a"], max_attempts=3)
    board.claim("a", board.post())
    board.flush()
    assert board.finish("a", error="cannot ever work", final=True) is None
    board.flush()
    row = board.arbiter.task("t-1")
    assert row is not None and row.state == "failed" and row.attempt == 1

    other = Wire(tmp_path / "x", ["a"], max_attempts=1, lease=1.0)
    other.claim("a", other.post())
    other.flush()
    other.now += 5
    other.expire()
    row = other.arbiter.task("t-1")
    assert row is not None and row.state == "failed" and "expired" in (row.error or "")


def test_ineligible_claim_is_refused(tmp_path: Path) -> None:
    board = Wire(tmp_path, ["a"])
    board.claim("a", board.post(role="worker"), role="tester")
    board.flush()
    row = board.arbiter.task("t-1")
    assert row is not None and row.state == "open"
    work = board.claimers["a"].work("poster", "t-1")
    assert work is not None and work.state == "refused" and "not eligible" in (work.answer or "")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["claim", "deliver", "complete", "fail", "tick", "renew"]),
                          st.sampled_from(["a", "b", "c"])), min_size=1, max_size=40), st.randoms())
def test_random_interleavings_keep_the_invariants(tmp_path_factory: pytest.TempPathFactory,
                                                  steps: list[tuple[str, str]], rng: random.Random) -> None:
    """Whatever the claimers do, in whatever order: fences only grow, at most one completion,
    and a completion is accepted only from the claim that held the task then."""
    tmp = tmp_path_factory.mktemp("race")
    board = Wire(tmp, ["a", "b", "c"], lease=1.0, max_attempts=3)
    board.post()
    fences = [0]
    for op, name in steps:
        if op == "claim":
            fx = Effects()
            board.arbiter.write(lambda db, fx=fx: arbiter.offer_due(db, fx, board.now + 100, 1.0, 1.0))  # type: ignore[misc]
            if fx.offers:
                board.claim(name, fx.offers[0])
        elif op == "deliver":
            rng.shuffle(board.inboxes["poster"])
            board.flush()
        elif op == "complete":
            board.finish(name, result={"by": name})
        elif op == "fail":
            board.finish(name, error="x")
        elif op == "renew":
            work = board.claimers[name].work("poster", "t-1")
            if work is not None and work.fence:
                message = TaskMessage("renew", "t-1", fence=work.fence)
                board._from[id(message)] = name
                board.inboxes["poster"].append(message)
        else:
            board.now += rng.choice([0.3, 1.5])
            board.expire()
        row = board.arbiter.task("t-1")
        assert row is not None and row.fence >= fences[-1]
        fences.append(row.fence)
    board.flush()
    events = board.events()
    completed = [e for e in events if e[0] == "completed"]
    assert len(completed) <= 1
    grants = [e for e in events if e[0] == "granted"]
    assert [g[2] for g in grants] == list(range(1, len(grants) + 1))  # one grant per fence, in order
    if completed:
        by, fence = completed[0][1], completed[0][2]
        assert (by, fence) in {(g[1], g[2]) for g in grants}
        row = board.arbiter.task("t-1")
        assert row is not None and row.state == "completed" and row.result == {"by": by}
        for name, ledger in board.claimers.items():  # a claimer thinks its completion counted only if it did
            work = ledger.work("poster", "t-1")
            if work is not None and work.state == "done" and (work.answer or "").startswith("complete"):
                assert name == by
