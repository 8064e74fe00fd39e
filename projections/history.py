"""State at sequence N and at time T (rulebook R3.7), from the latest snapshot at or before the
point plus the events after it, so the cost of a query does not grow with the log's length."""

from __future__ import annotations

from typing import Callable

from events.canonical import decode
from events.store import LogStore
from projections import snapshot
from projections.state import Folder, LedgerState


def state_at_seq(
    store: LogStore, seq: int, observe: Callable[[int, bytes], None] | None = None
) -> LedgerState:
    """The state after event ``seq`` (0: the empty state). ``seq`` is clamped to the head.

    ``observe(seq, payload)`` sees the bytes of every event folded after the snapshot (the
    tamper-evident log uses it to check them against the Merkle tree before signing)."""
    head, _ = store.head()
    seq = max(0, min(seq, head))
    snap = store.latest_snapshot(seq)
    state = snapshot.decode(snap[1]) if snap else LedgerState()
    if state.seq == seq:
        return state
    folder = Folder(state)
    # One event of look-ahead: an input at ``seq`` is a no-op when ``seq + 1`` rejects it.
    next_event = None
    for page in store.read_payloads(after_seq=state.seq, upto_seq=min(seq + 1, head)):
        for event_seq, _type, payload in page:
            event = decode(payload)
            if event_seq > seq:
                next_event = event
            else:
                if observe is not None:
                    observe(event_seq, payload)
                folder.feed(event)
    return folder.finish(next_event)


def seq_at_time(store: LogStore, ts_us: int) -> int:
    """R3.7: the last event of the last input with ts <= T (its decisions share its ts)."""
    return store.seq_at_time(ts_us)


def state_at_time(store: LogStore, ts_us: int) -> LedgerState:
    return state_at_seq(store, seq_at_time(store, ts_us))
