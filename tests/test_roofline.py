"""The compute floor's arithmetic (medwb.bench.roofline): the token's matrices, the probe plan,
the fit that separates per-call, per-matrix and per-weight costs, and the binding floor."""
import pytest

from medwb.bench import roofline
from medwb.models import architectures
from medwb.models.random_weights import SHAPES


def test_a_tokens_matrices_are_its_weights_read_but_norms_and_the_embedding_row():
    shape = architectures.shape(SHAPES["tinyllama-1.1b"])
    mm = shape.matmuls()
    multiplied = sum(k * n * c for k, n, c in mm)
    norms = shape.layers * shape.norms_per_layer * shape.hidden + shape.hidden
    assert multiplied == shape.read_per_token - shape.hidden - norms  # untied: one embedding row is read
    assert (shape.hidden, shape.vocab, 1) in mm  # the output layer
    assert (shape.intermediate, shape.hidden, shape.layers) in mm  # down projection, once per layer


def test_the_plan_times_two_cache_sized_widths_at_two_repeats_per_inner_dimension():
    plan = roofline.plan([(2048, 256, 22), (2048, 5632, 44), (5632, 2048, 22)], bytes_per_weight=0.5)
    assert {p["k"] for p in plan} == {2048, 5632}
    for k in (2048, 5632):
        widths = sorted({p["n"] for p in plan if p["k"] == k})
        assert len(widths) == 2 and widths[1] == 2 * widths[0] and widths[0] % roofline.ROW_BLOCK == 0
        # one slice within its share of the caches, or the narrowest wide slice (4 row blocks)
        assert widths[1] * k * 0.5 <= roofline.SLICE_BYTES or widths[1] == 4 * roofline.ROW_BLOCK
        assert sorted(p["r"] for p in plan if p["k"] == k and p["n"] == widths[0]) == list(roofline.REPEATS)


def _timings(plan, call_us, matrix_us, weight_ns):
    """What a kernel with these costs would take per call: the call once, each product once."""
    return [{**p, "s": (call_us + p["r"] * (matrix_us + weight_ns * 1e-3 * p["k"] * p["n"])) * 1e-6} for p in plan]


def test_the_fit_recovers_the_per_matrix_and_per_weight_costs_without_the_per_call_one():
    mm = [(64, 128, 2), (128, 64, 1)]
    fits = roofline.fit(_timings(roofline.plan(mm, 1.0), call_us=40.0, matrix_us=5.0, weight_ns=0.02))
    for k in (64, 128):
        assert fits[k]["per_matrix_us"] == pytest.approx(5.0, abs=1e-3)
        assert fits[k]["ns_per_weight"] == pytest.approx(0.02, rel=1e-4)
        assert fits[k]["method"] == "two widths"
    # By hand: 3 products of 8192 weights, each 5 us + 8192 x 0.02 ns = 5.16384 us.
    assert roofline.compute_floor_ms(mm, fits) == pytest.approx(3 * 5.16384e-3, rel=1e-4)
    assert roofline.compute_floor_ms([(256, 64, 1)], fits) is None  # a K that was not timed


def test_a_narrow_slice_slower_than_a_wide_one_spreads_the_wide_ones_cost():
    plan = roofline.plan([(64, 64, 1)], 1.0)
    lo, hi = sorted({p["n"] for p in plan})
    times = [{**p, "s": (10 + p["r"] * (50 if p["n"] == lo else 40)) * 1e-6} for p in plan]
    fit = roofline.fit(times)[64]
    assert fit["method"] == "widest slice" and fit["per_matrix_us"] == 0.0
    assert fit["ns_per_weight"] == pytest.approx(40e3 / (64 * hi), rel=1e-4)


def test_the_larger_floor_binds_and_the_percentage_is_against_it():
    assert roofline.limit(9.0, 22.7, 25.4) == {"binding_floor": "compute", "limit_ms": 22.7, "pct_of_limit": 89.4}
    assert roofline.limit(9.0, None, 18.0) == {"binding_floor": "bandwidth", "limit_ms": 9.0, "pct_of_limit": 50.0}
    assert roofline.limit(None, None, 18.0) == {}
    # A kernels' floor above the measured time bounds nothing (10% is noise): bandwidth binds.
    assert roofline.limit(9.0, 21.7, 21.5)["binding_floor"] == "compute"
    above = roofline.limit(9.0, 37.4, 30.2)
    assert above["binding_floor"] == "bandwidth" and not roofline.bounds(37.4, 30.2)
    assert "bounds nothing" in above["compute_floor_error"]
