"""The durable ledger on real SQLite: commits that survive a reopen, event_id dedupe, refusal of an
hour's overflow without harm to its neighbours in the same group commit, roll-forward, group commit."""

from __future__ import annotations

import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import ledger as ledger_module
from sidecar.allocations import HOUR, MAX_QUANTITY, UNTAGGED, Event, tag_key
from sidecar.ledger import Ingested, Ledger, LedgerError, add_usage

H = 1795687200  # 2026-11-26T10:00:00Z
T1 = tag_key({"tenant": "a"})
T2 = tag_key({"tenant": "b", "plan": "pro"})


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def ledger(path: Path) -> Iterator[Ledger]:
    opened = Ledger(path)
    yield opened
    opened.close()


def usage_of(ledger: Ledger) -> list[tuple[str, int, str, int]]:
    """The open usage rows, (dimension, hour, tag set, quantity), in a fixed order."""
    return sorted(ledger.open_usage())


class Gate:
    """Holds the writer thread inside a job, so that jobs submitted meanwhile queue up and are committed
    together, and records every statement the writer's connection runs (to count COMMITs)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.statements: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        ledger.submit(lambda conn: conn.set_trace_callback(self.statements.append)).result(timeout=10)
        self.held = ledger.submit(self._hold)
        assert self.entered.wait(timeout=10)

    def _hold(self, conn: sqlite3.Connection) -> None:
        self.entered.set()
        assert self.release.wait(timeout=30)

    def open(self) -> None:
        # The gate's own job was alone in its batch (nothing else was queued when the writer took it), so
        # its transaction is the first COMMIT after this point; every later one is the queued jobs'.
        self.mark = self._commits() + 1
        self.release.set()
        self.held.result(timeout=10)

    def _commits(self) -> int:
        return sum(1 for s in self.statements if s.strip().upper() == "COMMIT")

    def commits_after(self) -> int:
        """How many transactions the writer committed for the jobs that queued behind the gate."""
        return self._commits() - self.mark

    def wait_queued(self, count: int) -> None:
        # The writer is parked in _hold: the queue only grows until the gate opens.
        for _ in range(10_000):
            if self.ledger._jobs.qsize() >= count:
                return
            threading.Event().wait(0.001)
        raise AssertionError(f"only {self.ledger._jobs.qsize()} of {count} jobs queued")


# --- durability ----------------------------------------------------------------------------------


def test_ingest_commits_and_survives_reopening(path: Path) -> None:
    first = Ledger(path)
    result = first.ingest(
        [Event("requests", 5, T1, "e1"), Event("requests", 7, T1), Event("storage_gb", 3, UNTAGGED)], H
    ).result(timeout=10)
    assert result == Ingested(accepted=3, duplicates=0)
    first.close()

    again = Ledger(path)
    try:
        assert usage_of(again) == [("requests", H, T1, 12), ("storage_gb", H, UNTAGGED, 3)]
        # The event id was stored with the usage: it is still a duplicate after the reopen.
        assert again.ingest([Event("requests", 5, T1, "e1")], H).result(timeout=10) == Ingested(0, 1)
        assert usage_of(again) == [("requests", H, T1, 12), ("storage_gb", H, UNTAGGED, 3)]
    finally:
        again.close()
    # And it is on disk for any reader, not only in the ledger's own connections.
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT SUM(quantity) FROM usage").fetchone() == (15,)


def test_pod_id_is_stable_across_reopen_and_distinct_per_state_dir(tmp_path: Path) -> None:
    one = Ledger(tmp_path / "a.db")
    pod = one.pod_id
    one.close()
    again = Ledger(tmp_path / "a.db")
    other = Ledger(tmp_path / "b.db")
    try:
        assert again.pod_id == pod
        assert other.pod_id != pod
        assert len(pod) >= 32
    finally:
        again.close()
        other.close()


# --- event_id dedupe -----------------------------------------------------------------------------


def test_a_repeated_event_id_within_one_batch_is_counted_once(ledger: Ledger) -> None:
    events = [Event("requests", 5, T1, "same"), Event("requests", 5, T1, "same"), Event("requests", 1, T1)]
    assert ledger.ingest(events, H).result(timeout=10) == Ingested(accepted=2, duplicates=1)
    assert usage_of(ledger) == [("requests", H, T1, 6)]


def test_a_repeated_event_id_across_batches_is_counted_once(ledger: Ledger) -> None:
    assert ledger.ingest([Event("requests", 5, T1, "e1")], H).result(timeout=10) == Ingested(1, 0)
    # A client retry, even one that lands in a later hour or with other content, is the same event.
    again = [Event("requests", 5, T1, "e1"), Event("requests", 2, T2, "e2"), Event("storage_gb", 9, T1, "e1")]
    assert ledger.ingest(again, H + HOUR).result(timeout=10) == Ingested(accepted=1, duplicates=2)
    assert usage_of(ledger) == [("requests", H, T1, 5), ("requests", H + HOUR, T2, 2)]


def test_events_without_an_id_are_all_counted(ledger: Ledger) -> None:
    assert ledger.ingest([Event("requests", 1, UNTAGGED)] * 4, H).result(timeout=10) == Ingested(4, 0)
    assert usage_of(ledger) == [("requests", H, UNTAGGED, 4)]


# --- refusal ---------------------------------------------------------------------------------------


def test_an_hour_may_hold_exactly_the_int32_maximum(ledger: Ledger) -> None:
    ledger.ingest([Event("requests", MAX_QUANTITY - 1, T1)], H).result(timeout=10)
    ledger.ingest([Event("requests", 1, T2)], H).result(timeout=10)
    assert sum(q for *_, q in usage_of(ledger)) == MAX_QUANTITY
    with pytest.raises(LedgerError) as caught:
        ledger.ingest([Event("requests", 1, UNTAGGED, "one-more")], H).result(timeout=10)
    assert caught.value.field == "quantity"
    assert "requests" in caught.value.message
    # The next hour, and another dimension, are separate records with their own limits.
    ledger.ingest(
        [Event("requests", 1, UNTAGGED), Event("storage_gb", MAX_QUANTITY, UNTAGGED)], H + HOUR
    ).result(timeout=10)


def test_a_refused_request_stores_nothing_while_its_neighbour_in_the_same_commit_is_stored(
    ledger: Ledger,
) -> None:
    ledger.ingest([Event("requests", MAX_QUANTITY - 10, T1, "base")], H).result(timeout=10)
    gate = Gate(ledger)
    # One request is fine for storage_gb, but pushes requests over the int32 maximum: all of it is refused,
    # its storage_gb event and its event ids included.
    refused = ledger.ingest(
        [Event("storage_gb", 4, T2, "r-1"), Event("requests", 6, T1, "r-2"), Event("requests", 5, T2, "r-3")],
        H,
    )
    fine = ledger.ingest([Event("requests", 10, T2, "f-1"), Event("storage_gb", 1, UNTAGGED, "f-2")], H)
    gate.wait_queued(2)
    gate.open()
    with pytest.raises(LedgerError):
        refused.result(timeout=10)
    assert fine.result(timeout=10) == Ingested(2, 0)
    assert gate.commits_after() == 1  # both were decided in one transaction
    assert usage_of(ledger) == [
        ("requests", H, T2, 10),
        ("requests", H, T1, MAX_QUANTITY - 10),
        ("storage_gb", H, UNTAGGED, 1),
    ]
    # Nothing of the refused request was kept: its event ids are free, so a corrected resend counts.
    assert ledger.ingest([Event("storage_gb", 4, T2, "r-1")], H).result(timeout=10) == Ingested(1, 0)
    assert ledger.read("SELECT event_id FROM event_ids ORDER BY event_id") == [
        ("base",),
        ("f-1",),
        ("f-2",),
        ("r-1",),
    ]


def test_a_job_that_raises_rolls_back_alone(ledger: Ledger) -> None:
    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('bad', 'x')")
        raise RuntimeError("refused")

    def good(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO meta (key, value) VALUES ('good', 'y')")
        return "ok"

    gate = Gate(ledger)
    failing = ledger.submit(bad)
    succeeding = ledger.submit(good)
    gate.wait_queued(2)
    gate.open()
    with pytest.raises(RuntimeError, match="refused"):
        failing.result(timeout=10)
    assert succeeding.result(timeout=10) == "ok"
    assert gate.commits_after() == 1
    assert ledger.read("SELECT key FROM meta WHERE key IN ('bad', 'good')") == [("good",)]


# --- roll-forward ----------------------------------------------------------------------------------


def seal_record(ledger: Ledger, dimension: str, hour: int) -> None:
    ledger.submit(
        lambda conn: conn.execute(
            "INSERT INTO records (dimension, hour, state, quantity, body, sealed_at) VALUES (?, ?, 'sealed', 0, '{}', ?)",
            (dimension, hour, hour + HOUR),
        )
    ).result(timeout=10)


def test_usage_for_a_sealed_hour_rolls_forward_into_the_next_hour(ledger: Ledger) -> None:
    seal_record(ledger, "requests", H)
    ledger.ingest([Event("requests", 4, T1), Event("storage_gb", 2, T1)], H).result(timeout=10)
    # Late usage, for an hour before the sealed one, rolls forward too: never behind a sealed record.
    ledger.ingest([Event("requests", 3, T1)], H - 2 * HOUR).result(timeout=10)
    ledger.ingest([Event("requests", 1, T2)], H + HOUR).result(timeout=10)
    assert usage_of(ledger) == [
        ("requests", H + HOUR, T2, 1),
        ("requests", H + HOUR, T1, 7),
        ("storage_gb", H, T1, 2),  # no record for storage_gb: it stays in its own hour
    ]
    seal_record(ledger, "requests", H + HOUR)
    ledger.ingest([Event("requests", 5, T1)], H).result(timeout=10)
    assert ("requests", H + 2 * HOUR, T1, 5) in usage_of(ledger)


def test_the_overflow_check_applies_to_the_hour_usage_rolls_into(ledger: Ledger) -> None:
    seal_record(ledger, "requests", H)
    ledger.ingest([Event("requests", MAX_QUANTITY, T1)], H + HOUR).result(timeout=10)
    with pytest.raises(LedgerError):
        ledger.ingest([Event("requests", 1, T1)], H).result(timeout=10)  # rolls into H+1, which is full
    assert usage_of(ledger) == [("requests", H + HOUR, T1, MAX_QUANTITY)]


def test_the_overflow_check_sees_usage_that_other_jobs_removed_or_added(ledger: Ledger) -> None:
    """The writer caches each open hour's total; a job that is not an ingest (the meter's seal and carry)
    may change usage behind it, so the check must not trust a total from before such a job."""
    ledger.ingest([Event("requests", MAX_QUANTITY - 10, T1)], H).result(timeout=10)
    # Like a seal: the hour's usage is removed. 100 more now fit.
    ledger.submit(lambda conn: conn.execute("DELETE FROM usage WHERE hour = ?", (H,))).result(timeout=10)
    assert ledger.ingest([Event("requests", 100, T1)], H).result(timeout=10) == Ingested(1, 0)
    # Like a carry: usage is added without an ingest. Now the hour is full.
    ledger.submit(lambda conn: add_usage(conn, "requests", H, T2, MAX_QUANTITY - 100)).result(timeout=10)
    with pytest.raises(LedgerError):
        ledger.ingest([Event("requests", 1, T1)], H).result(timeout=10)
    assert sum(q for *_, q in usage_of(ledger)) == MAX_QUANTITY


def test_a_refused_request_leaves_the_hours_total_as_it_was(ledger: Ledger) -> None:
    ledger.ingest([Event("requests", MAX_QUANTITY - 5, T1)], H).result(timeout=10)
    with pytest.raises(LedgerError):
        ledger.ingest([Event("requests", 3, T1), Event("requests", 3, T2)], H).result(timeout=10)
    # The refused 6 were not counted: exactly 5 more fit, and then nothing.
    assert ledger.ingest([Event("requests", 5, T2)], H).result(timeout=10) == Ingested(1, 0)
    with pytest.raises(LedgerError):
        ledger.ingest([Event("requests", 1, T1)], H).result(timeout=10)
    assert usage_of(ledger) == sorted([("requests", H, T1, MAX_QUANTITY - 5), ("requests", H, T2, 5)])


def test_tag_sets_of_any_characters_are_stored_exactly(ledger: Ledger) -> None:
    """A request's tag sets go to SQLite as one JSON array; what comes out must be what went in."""
    keys = [
        tag_key({"k": 'a "quote", a backslash \\ and a slash /'}),
        tag_key({"k": "caf\u00e9 \u2713"}),
        tag_key({"k": "tab\tnewline\n"}),
        'raw text: caf\u00e9 \u2713 "quoted" \\',
        "raw text with a NUL \x00 inside",
        "raw text with an emoji \U0001f600",
        UNTAGGED,
    ]
    plain = tag_key({"k": "plain"})
    for n, key in enumerate(keys):  # each with a plain neighbour: a request of several tag sets
        ledger.ingest([Event("requests", n + 1, key), Event("requests", 100, plain)], H).result(timeout=10)
    stored = {tags: quantity for _, _, tags, quantity in usage_of(ledger)}
    assert stored == {plain: 100 * len(keys), **{key: n + 1 for n, key in enumerate(keys)}}
    # All in one request, added to the same rows.
    ledger.ingest([Event("requests", 10, key) for key in keys], H).result(timeout=10)
    stored = {tags: quantity for _, _, tags, quantity in usage_of(ledger)}
    assert stored == {plain: 100 * len(keys), **{key: n + 11 for n, key in enumerate(keys)}}


# --- group commit ----------------------------------------------------------------------------------


def test_many_concurrent_ingests_all_land_in_fewer_commits_than_requests(ledger: Ledger) -> None:
    gate = Gate(ledger)
    futures: list[Any] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(25):
            future = ledger.ingest(
                [Event("requests", 1, T1, f"c{n}-{i}"), Event("storage_gb", 2, UNTAGGED)], H
            )
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    gate.wait_queued(200)
    gate.open()
    assert [f.result(timeout=30) for f in futures] == [Ingested(2, 0)] * 200
    assert gate.commits_after() == 1  # 200 requests, one transaction (the batch limit is 512)
    assert usage_of(ledger) == [("requests", H, T1, 200), ("storage_gb", H, UNTAGGED, 400)]
    assert ledger.read("SELECT COUNT(*) FROM event_ids") == [(200,)]


def test_concurrent_ingests_without_a_gate_all_land(ledger: Ledger) -> None:
    results: list[Ingested] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(25):
            result = ledger.ingest([Event("requests", 3, T2, f"c{n}-{i}")], H).result(timeout=30)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [Ingested(1, 0)] * 200
    assert usage_of(ledger) == [("requests", H, T2, 600)]


# --- a group of ingests is decided as if each ran alone ----------------------------------------------

# A step: ("ingest", events, hour) or ("seal", dimension, hour), a job that is not an ingest.
_events = st.lists(
    st.builds(
        Event,
        st.sampled_from(["requests", "storage_gb"]),
        st.one_of(st.integers(0, 5), st.integers(MAX_QUANTITY // 3, MAX_QUANTITY)),  # some near the limit
        st.sampled_from([T1, T2, UNTAGGED]),
        st.one_of(st.none(), st.sampled_from(["e1", "e2", "e3", "e4"])),  # ids repeat within and across
    ),
    min_size=1,
    max_size=4,
)
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), _events, st.sampled_from([H, H + HOUR])),
        st.tuples(st.just("seal"), st.sampled_from(["requests", "storage_gb"]), st.just(H)),
    ),
    min_size=1,
    max_size=8,
)


def _outcome(future: Any) -> Any:
    try:
        return future.result(timeout=10)
    except LedgerError as err:
        return ("refused", err.field, err.message)


def _state(ledger: Ledger) -> tuple[Any, ...]:
    return (usage_of(ledger), ledger.read("SELECT event_id, hour FROM event_ids ORDER BY event_id"))


def _submit(ledger: Ledger, step: tuple[Any, ...]) -> Any:
    if step[0] == "ingest":
        return ledger.ingest(step[1], step[2])
    _, dimension, hour = step
    return ledger.submit(
        lambda conn: (
            conn.execute(
                "INSERT OR IGNORE INTO records (dimension, hour, state, quantity, body, sealed_at) "
                "VALUES (?, ?, 'sealed', 0, '{}', ?)",
                (dimension, hour, hour + HOUR),
            )
            and None
        )
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_events, steps=_steps)
def test_jobs_committed_together_end_as_if_each_had_run_alone(
    before: list[Event], steps: list[tuple[Any, ...]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        alone, together = Ledger(Path(tmp) / "alone.db"), Ledger(Path(tmp) / "together.db")
        try:
            for ledger in (alone, together):
                _outcome(ledger.ingest(before, H))
            expected = [_outcome(_submit(alone, step)) for step in steps]  # one job per transaction
            gate = Gate(together)
            futures = [_submit(together, step) for step in steps]
            gate.wait_queued(len(steps))
            gate.open()
            assert [_outcome(f) for f in futures] == expected
            assert gate.commits_after() == 1
            assert _state(together) == _state(alone)
        finally:
            alone.close()
            together.close()


@pytest.mark.parametrize("after_another_job", [False, True], ids=["group-opens", "after-another-job"])
def test_when_the_shared_write_fails_each_job_runs_alone(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, after_another_job: bool
) -> None:
    """The group's one write failing (here: any write that holds the tag set BAD) must not take the other
    jobs with it, nor a job that ran before the group in the same transaction: the ingests run again
    one by one, and only the one that cannot be written fails."""
    bad = tag_key({"tenant": "bad"})
    real = ledger_module.add_usage_rows
    writes: list[int] = []

    def add_usage_rows(conn: sqlite3.Connection, rows: list[tuple[str, int, str, int]]) -> None:
        writes.append(len(rows))
        if any(tags == bad for _, _, tags, _ in rows):
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        real(conn, rows)

    monkeypatch.setattr(ledger_module, "add_usage_rows", add_usage_rows)
    gate = Gate(ledger)
    other = None
    if after_another_job:
        other = ledger.submit(
            lambda conn: conn.execute("INSERT INTO meta (key, value) VALUES ('other', 'x')") and 1
        )
    first = ledger.ingest([Event("requests", 1, T1, "a")], H)
    failing = ledger.ingest([Event("requests", 2, bad, "b")], H)
    last = ledger.ingest([Event("requests", 3, T2, "c"), Event("requests", 4, T1)], H)
    gate.wait_queued(4 if after_another_job else 3)
    gate.open()
    assert first.result(timeout=10) == Ingested(1, 0)
    with pytest.raises(sqlite3.OperationalError, match="simulated"):
        failing.result(timeout=10)
    assert last.result(timeout=10) == Ingested(2, 0)
    assert writes[0] == 3  # the group's one write, all three tag sets, which failed; then job by job
    assert gate.commits_after() == 1
    assert usage_of(ledger) == sorted([("requests", H, T1, 5), ("requests", H, T2, 3)])
    assert ledger.read("SELECT event_id FROM event_ids ORDER BY event_id") == [("a",), ("c",)]
    if other is not None:  # the job before the group kept its work
        assert other.result(timeout=10) == 1
        assert ledger.read("SELECT value FROM meta WHERE key = 'other'") == [("x",)]
    # The totals the group had counted were forgotten: the hour's total is what is stored.
    ledger.ingest([Event("requests", MAX_QUANTITY - 8, T2)], H).result(timeout=10)
    with pytest.raises(LedgerError):
        ledger.ingest([Event("requests", 1, T2)], H).result(timeout=10)


def test_a_lone_ingest_whose_write_fails_fails_alone(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    def add_usage_rows(conn: sqlite3.Connection, rows: list[tuple[str, int, str, int]]) -> None:
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    ledger.ingest([Event("requests", 7, T1, "kept")], H).result(timeout=10)
    monkeypatch.setattr(ledger_module, "add_usage_rows", add_usage_rows)
    with pytest.raises(sqlite3.OperationalError, match="simulated"):
        ledger.ingest([Event("requests", 1, T2, "lost")], H).result(timeout=10)
    monkeypatch.undo()
    assert usage_of(ledger) == [("requests", H, T1, 7)]
    assert ledger.read("SELECT event_id FROM event_ids") == [("kept",)]
    assert ledger.ingest([Event("requests", 1, T2, "lost")], H).result(timeout=10) == Ingested(1, 0)
