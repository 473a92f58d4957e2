"""Held-call admission by shared memory (pushgate/shm_budget.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pushgate.shm_budget import room_to_hold

MB, KB = 2**20, 2**10


def test_the_base_reserve_and_every_held_calls_wake_up_must_fit() -> None:
    base, wake = 16 * MB, 25 * KB
    # 1,000 calls held: the next needs 16 MB + 1,001 wake-ups free.
    need = base + 1001 * wake
    assert room_to_hold(need + 1, 1000, base, wake)
    assert not room_to_hold(need, 1000, base, wake)
    assert not room_to_hold(base, 0, base, wake)  # the new call's own wake-up too


def test_off_or_unknown_never_refuses() -> None:
    assert room_to_hold(0, 10**6, 0, 25 * KB)  # PUSHGATE_SHM_RESERVE 0: off
    assert room_to_hold(None, 10**6, 16 * MB, 25 * KB)  # no figure from Kamailio


@given(
    free=st.integers(0, 2**34),
    held=st.integers(-5, 10**6),
    base=st.integers(1, 2**30),
    wake=st.integers(-5, 2**20),
)
def test_holding_more_never_makes_room(free: int, held: int, base: int, wake: int) -> None:
    if not room_to_hold(free, held, base, wake):
        assert not room_to_hold(free, held + 1, base, wake)
        assert not room_to_hold(free - 1, held, base, wake)
    if room_to_hold(free, held, base, wake):
        assert free > base  # the base reserve always stays free
