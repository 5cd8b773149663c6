"""The telemetry outbox on a real SQLite file: seq order, PUBACK deletes, the row/age bound with its persistent
drop counter, seq surviving a reopen, and sharing the file with the store.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.store import Store
from controller.uplink.outbox import Outbox


def seqs_of(box: Outbox, after: int = 0, limit: int = 10_000) -> list[int]:
    return [s for s, _ in box.peek(after, limit)]


def test_seq_is_consecutive_and_payload_carries_it(tmp_path):
    box = Outbox(tmp_path / "db", 1000, 3600)
    assert box.append({"soc_pct": 50.0}) == 1
    assert box.append_many([{"soc_pct": 51.0}, {"soc_pct": 52.0, "seq": 999}]) == [2, 3]
    rows = box.peek(0, 10)
    assert [s for s, _ in rows] == [1, 2, 3]
    assert [json.loads(p) for _, p in rows] == [
        {"seq": 1, "soc_pct": 50.0},
        {"seq": 2, "soc_pct": 51.0},
        {"seq": 3, "soc_pct": 52.0},
    ]  # a caller's seq never wins
    assert box.depth == 3 and box.last_seq == 3
    box.close()


def test_peek_is_in_seq_order_after_the_cursor(tmp_path):
    box = Outbox(tmp_path / "db", 10_000, 3600)
    box.append_many([{"i": i} for i in range(2500)])  # spans several write batches
    assert seqs_of(box) == list(range(1, 2501))
    assert seqs_of(box, 1000, 5) == [1001, 1002, 1003, 1004, 1005]
    box.close()


def test_delete_only_what_was_acked(tmp_path):
    box = Outbox(tmp_path / "db", 1000, 3600)
    box.append_many([{"i": i} for i in range(10)])
    assert box.delete([1, 2, 3]) == 3  # a contiguous run
    assert box.delete([5, 7, 7, 42]) == 2  # scattered, a duplicate, an unknown seq
    assert seqs_of(box) == [4, 6, 8, 9, 10] and box.depth == 5
    box.close()


def test_row_bound_drops_oldest_and_counts_persistently(tmp_path):
    path = tmp_path / "db"
    box = Outbox(path, 100, 3600)
    box.append_many([{"i": i} for i in range(150)])
    assert box.depth == 100 and box.dropped == 50
    assert seqs_of(box) == list(range(51, 151))
    for i in range(5):
        box.append({"i": i})
    assert box.dropped == 55 and seqs_of(box)[0] == 56
    box.close()
    again = Outbox(path, 100, 3600)
    assert again.dropped == 55 and again.depth == 100 and again.last_seq == 155
    again.close()


def test_age_bound_drops_old_rows(tmp_path):
    now = [1000.0]
    box = Outbox(tmp_path / "db", 1000, 60, now=lambda: now[0])
    box.append_many([{"i": i} for i in range(3)])
    now[0] += 30
    box.append_many([{"i": i} for i in range(2)])
    assert box.expire() == 0
    now[0] += 31  # the first three are 61 s old, the last two 31 s
    assert box.expire() == 3
    assert seqs_of(box) == [4, 5] and box.dropped == 3 and box.depth == 2
    box.close()


def test_seq_survives_reopen_even_when_empty(tmp_path):
    path = tmp_path / "db"
    box = Outbox(path, 1000, 3600)
    box.append_many([{"i": i} for i in range(7)])
    box.delete(range(1, 8))
    assert box.depth == 0
    box.close()
    box = Outbox(path, 1000, 3600)
    assert box.depth == 0 and box.append({"i": 0}) == 8
    box.close()


def test_rows_survive_reopen_in_order(tmp_path):
    path = tmp_path / "db"
    box = Outbox(path, 1000, 3600)
    box.append_many([{"i": i} for i in range(20)])
    box.delete([1, 2])
    box.close()
    box = Outbox(path, 1000, 3600)
    assert seqs_of(box) == list(range(3, 21)) and box.depth == 18
    box.close()


def test_shares_the_store_file(tmp_path):
    store = Store.in_state_dir(tmp_path)
    box = Outbox(store.path, 1000, 3600)
    box.append_many([{"i": i} for i in range(5)])
    store.set_state("k", 1)  # the store keeps writing beside us
    assert store.get_state("k") == 1 and box.depth == 5
    assert store.schema_version > 0  # our tables never touch its migrations
    box.close()
    store.close()


@settings(max_examples=50, deadline=None)
@given(
    ops=st.lists(
        st.one_of(st.tuples(st.just("add"), st.integers(1, 40)), st.tuples(st.just("ack"), st.integers(0, 40))),
        max_size=30,
    )
)
def test_model_ordering_and_bound(tmp_path_factory, ops):
    """Against a list model: rows are always the newest `max_rows` unacked seqs, in order; dropped counts the rest."""
    box = Outbox(tmp_path_factory.mktemp("ob") / "db", 50, 3600)
    model: list[int] = []
    dropped = next_seq = 0
    for op, n in ops:
        if op == "add":
            got = box.append_many([{} for _ in range(n)])
            assert got == list(range(next_seq + 1, next_seq + n + 1))
            next_seq += n
            model.extend(got)
            if len(model) > 50:
                dropped += len(model) - 50
                model = model[-50:]
        else:
            acked = model[:n]  # PUBACKs arrive oldest first
            box.delete(acked)
            model = model[n:]
        assert seqs_of(box) == model and box.depth == len(model) and box.dropped == dropped
    box.close()


def test_bad_bound_refused(tmp_path):
    with pytest.raises(ValueError):
        Outbox(tmp_path / "db", 0, 60)
