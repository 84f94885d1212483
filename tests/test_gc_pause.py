"""The cyclic collector is paused inside an indexing call and restored as it was after it."""
from __future__ import annotations

import gc

import pytest

from cytotune._gc import without_cyclic_gc


@without_cyclic_gc
def _state(fail: bool = False) -> bool:
    if fail:
        raise ValueError("boom")
    return gc.isenabled()


def test_paused_inside_and_restored_after_even_on_an_error():
    assert gc.isenabled()
    assert _state() is False and gc.isenabled()
    with pytest.raises(ValueError):
        _state(fail=True)
    assert gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        assert _state() is False and not gc.isenabled()
    finally:
        gc.enable()
