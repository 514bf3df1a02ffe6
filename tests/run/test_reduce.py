"""Per-batch reductions: blocked and masked strategies against a float64 reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from actlang.run.checkpoint import one_thread
from actlang.run.reduce import Reducer, ScoredRows

UNPAIRED = ("count", "sum", "sum_abs", "sum_sq", "count_pos")
PAIRED = ("count", "sum_diff", "sum_absdiff", "sum_sqdiff", "sum_abs_a", "sum_abs_b")


def zeros(fields: tuple[str, ...], width: int) -> dict[str, torch.Tensor]:
    return {f: torch.zeros(width, dtype=torch.float64) for f in fields}


def reference_unpaired(x: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    s = x[keep].to(torch.float64)
    return {"count": torch.full((x.shape[1],), float(len(s)), dtype=torch.float64), "sum": s.sum(0),
            "sum_abs": s.abs().sum(0), "sum_sq": (s * s).sum(0), "count_pos": (s > 0).sum(0).double()}


def reference_paired(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    sa, sb = a[keep].to(torch.float64), b[keep].to(torch.float64)
    d = sb - sa
    return {"count": torch.full((a.shape[1],), float(len(d)), dtype=torch.float64), "sum_diff": d.sum(0),
            "sum_absdiff": d.abs().sum(0), "sum_sqdiff": (d * d).sum(0),
            "sum_abs_a": sa.abs().sum(0), "sum_abs_b": sb.abs().sum(0)}


def assert_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    rtol, atol = (1e-12, 1e-9) if dtype == torch.float64 else (1e-5, 1e-3)
    for name, value in got.items():
        torch.testing.assert_close(value, want[name], rtol=rtol, atol=atol, msg=f"field {name}")


@st.composite
def batches(draw):
    """Activations [positions x per_position, width] as a (maybe column-sliced) view, with a mask."""
    positions = draw(st.integers(0, 40))
    per_position = draw(st.integers(1, 3))
    width = draw(st.integers(1, 24))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    mask = draw(st.one_of(st.none(), st.lists(st.booleans(), min_size=positions, max_size=positions)))
    sliced = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    block_bytes = draw(st.integers(1, 512))  # down to one row per block
    g = torch.Generator().manual_seed(seed)
    full = torch.randn(positions * per_position, width + 3, generator=g).to(dtype)
    x = full[:, 1 : width + 1] if sliced else full[:, :width].contiguous()  # a fused module's slice
    mask_t = None if mask is None else torch.tensor(mask, dtype=torch.bool)
    return x, mask_t, positions, per_position, block_bytes, seed


def keep_of(mask: torch.Tensor | None, positions: int, per_position: int) -> torch.Tensor:
    if mask is None:
        return torch.ones(positions * per_position, dtype=torch.bool)
    return mask.repeat_interleave(per_position)


@settings(max_examples=80, deadline=None)
@given(batches(), st.booleans())
def test_unpaired_matches_float64_reference(batch, masked):
    x, mask, positions, per_position, block_bytes, _ = batch
    before = x.clone()
    rows = ScoredRows.of(mask, positions, per_position)
    acc = zeros(UNPAIRED, x.shape[1])
    Reducer(block_bytes, masked=masked).unpaired(acc, x, rows)
    assert torch.equal(x, before), "the activations were written"
    assert_close(acc, reference_unpaired(x, keep_of(mask, positions, per_position)), x.dtype)


@settings(max_examples=80, deadline=None)
@given(batches(), st.booleans())
def test_paired_matches_float64_reference(batch, masked):
    a, mask, positions, per_position, block_bytes, seed = batch
    g = torch.Generator().manual_seed(seed + 1)
    b = (a.float() + 0.1 * torch.randn(a.shape, generator=g)).to(a.dtype)
    a_before, b_before = a.clone(), b.clone()
    acc = zeros(PAIRED, a.shape[1])
    Reducer(block_bytes, masked=masked).paired(acc, a, b, ScoredRows.of(mask, positions, per_position))
    assert torch.equal(a, a_before) and torch.equal(b, b_before), "the activations were written"
    assert_close(acc, reference_paired(a, b, keep_of(mask, positions, per_position)), a.dtype)


def test_batches_accumulate_and_buffers_are_reused():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(30, 5, generator=g) for _ in range(3)]
    reducer = Reducer(block_bytes=64)
    acc = zeros(UNPAIRED, 5)
    for x in xs:
        reducer.unpaired(acc, x, ScoredRows.of(None, 30))
    n_buffers = len(reducer._buffers)
    reducer.unpaired(zeros(UNPAIRED, 5), xs[0], ScoredRows.of(None, 30))
    assert len(reducer._buffers) == n_buffers
    assert_close(acc, reference_unpaired(torch.cat(xs), torch.ones(90, dtype=torch.bool)), torch.float32)


def test_only_requested_fields_are_computed():
    x = torch.randn(10, 4)
    acc = zeros(("count", "sum_abs"), 4)
    Reducer().unpaired(acc, x, ScoredRows.of(None, 10))
    assert set(acc) == {"count", "sum_abs"}
    torch.testing.assert_close(acc["sum_abs"], x.double().abs().sum(0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_at_unscored_rows_never_reach_the_sums(masked, bad):
    x = torch.randn(8, 3)
    x[5:] = bad  # e.g. the output of an all-masked attention row at padding
    mask = torch.tensor([True] * 5 + [False] * 3)
    acc = zeros(UNPAIRED, 3)
    Reducer(masked=masked).unpaired(acc, x, ScoredRows.of(mask, 8))
    assert all(torch.isfinite(v).all() for v in acc.values())
    assert_close(acc, reference_unpaired(x, mask), torch.float32)
    paired = zeros(PAIRED, 3)
    Reducer(masked=masked).paired(paired, torch.randn(8, 3), x, ScoredRows.of(mask, 8))
    assert all(torch.isfinite(v).all() for v in paired.values())


def test_non_finite_values_at_scored_rows_propagate():
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    acc = zeros(UNPAIRED, 3)
    Reducer().unpaired(acc, x, ScoredRows.of(None, 8))
    assert torch.isnan(acc["sum"][1]) and torch.isfinite(acc["sum"][0])


def test_scored_rows_are_runs_scaled_by_rows_per_position():
    mask = torch.tensor([True, True, False, True, False, False, True])
    rows = ScoredRows.of(mask, 7, per_position=2)
    assert rows.runs == ((0, 4), (6, 8), (12, 14))
    assert rows.count == 8 and rows.total == 14
    assert rows.keep is not None and rows.keep.squeeze(1).tolist() == mask.repeat_interleave(2).tolist()
    everything = ScoredRows.of(None, 7, per_position=2)
    assert everything.runs == ((0, 14),) and everything.keep is None and everything.count == 14
    assert ScoredRows.of(torch.zeros(3, dtype=torch.bool), 3).runs == ()


def test_one_thread_restores_the_thread_count_even_on_error():
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with one_thread():
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == threads
    x = torch.randn(6, 2)
    Reducer().unpaired(zeros(UNPAIRED, 2), x, ScoredRows.of(None, 6))
    assert torch.get_num_threads() == threads
