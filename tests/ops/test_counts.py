"""BatchHistogram and PlainCounter: the same exposition as prometheus_client's Histogram and Counter fed the same way."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from proxy.ops import metrics  # noqa: F401  (it disables the *_created series, as the proxy does)
from proxy.ops.counts import BatchHistogram, PlainCounter

_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)
_VALUES = st.one_of(st.sampled_from([0.0, *_BOUNDS]), st.floats(min_value=0, max_value=100, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(_VALUES, max_size=20), max_size=4))
def test_batches_export_what_a_histogram_fed_one_by_one_exports(batches):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batched = BatchHistogram("t_seconds", "Test", _BOUNDS, ours)
    single = Histogram("t_seconds", "Test", buckets=_BOUNDS, registry=theirs)
    for batch in batches:
        batched.observe_many(batch)
        for value in batch:
            single.observe(value)
    assert generate_latest(ours) == generate_latest(theirs)  # (values on a bound land in its bucket)


_LABELS = [("simple", "allowed"), ("simple", "rewritten"), ("extended", "refused")]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(_LABELS), max_size=30))
def test_a_plain_counter_exports_what_a_counter_does(incs):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    plain = PlainCounter("t_statements", "Test", ("protocol", "decision"), ours, _LABELS[:1])
    counter = Counter("t_statements", "Test", ["protocol", "decision"], registry=theirs)
    counter.labels(*_LABELS[0])
    for labels in incs:
        plain.inc(labels)
        counter.labels(*labels).inc()
    assert sorted(generate_latest(ours).splitlines()) == sorted(generate_latest(theirs).splitlines())
