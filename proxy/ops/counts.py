"""Metrics counted in plain Python on the hot path and exported at scrape: a labelled counter, a histogram fed in batches."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString


class BatchHistogram:
    """A histogram whose observations come in batches (the query statistics' flush, once a second):
    each costs a bisect into plain counts, where prometheus_client's Histogram takes a lock and
    updates every bucket. Registered as a collector: a scrape reads the counts as they are, and the
    exposition is the same as a Histogram's (cumulative `le` buckets, `_count`, `_sum`).

    >>> registry = CollectorRegistry()
    >>> h = BatchHistogram("t_seconds", "Test", (0.1, 1.0), registry)
    >>> h.observe_many([0.05, 0.1, 0.5, 7.0])
    >>> registry.get_sample_value("t_seconds_bucket", {"le": "0.1"}), registry.get_sample_value("t_seconds_count")
    (2, 4)
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(sorted(buckets))  # upper bounds; +Inf is the last count
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds, total = self.counts, self.bounds, self.sum
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # (the first bound >= value: its `le` bucket)
            total += value  # (in order: the sum a Histogram fed one by one has)
        self.sum = total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


class PlainCounter:
    """A labelled counter bumped once per statement: a plain dict of ints (prometheus_client's Counter
    takes a lock per increment). Registered as a collector; the exposition is a Counter's
    (`<name>_total` per label set, the label sets given at start shown at 0).

    >>> registry = CollectorRegistry()
    >>> c = PlainCounter("t_statements", "Test", ("protocol", "decision"), registry, [("simple", "allowed")])
    >>> c.inc(("extended", "refused")); c.inc(("extended", "refused"))
    >>> registry.get_sample_value("t_statements_total", {"protocol": "extended", "decision": "refused"})
    2
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        initial: Iterable[tuple[str, ...]] = (),
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.counts: dict[tuple[str, ...], int] = dict.fromkeys(initial, 0)
        registry.register(self)

    def inc(self, labels: tuple[str, ...]) -> None:
        counts = self.counts
        counts[labels] = counts.get(labels, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, count in self.counts.items():
            family.add_metric(labels, count)
        yield family
