"""Property-based tests: the file parsers accept every well-formed input and reject
everything else with DataError (never another exception, never a crash)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from aevb.data import DataError
from aevb.data.formats import parse_amat, parse_idx


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=3).flatmap(
    lambda shape: st.tuples(st.just(shape), st.binary(min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))))
def test_idx_round_trip(case):
    shape, payload = case
    header = bytes([0, 0, 8, len(shape)]) + b"".join(n.to_bytes(4, "big") for n in shape)
    arr = parse_idx(header + payload)
    assert arr.shape == tuple(shape) and arr.tobytes() == payload


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_idx_garbage_raises_data_error_only(data):
    try:
        parse_idx(data)
    except DataError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 1), min_size=6, max_size=6), min_size=1, max_size=5))
def test_amat_round_trip(rows):
    text = "".join(" ".join(str(v) for v in r) + "\n" for r in rows)
    assert parse_amat(text.encode(), cols=6).tolist() == rows


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=40))
def test_amat_garbage_raises_data_error_only(data):
    try:
        out = parse_amat(data, cols=4)
    except DataError:
        return
    assert set(np.unique(out)) <= {0, 1}
