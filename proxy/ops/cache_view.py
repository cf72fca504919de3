"""What operators see of the result cache: SHOW CACHE rows and the Prometheus families."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from proxy.cache.results import ResultCache

CACHE_COLUMNS = ("key", "value")


def cache_rows(cache: ResultCache) -> list[list[object]]:
    """SHOW CACHE: counters, memory, and per database whether answers are served and the WAL consumer's lag."""
    c = cache.counters
    rows: list[list[object]] = [
        ["hits", c.hits],
        ["misses", c.misses],
        ["stores", c.stores],
        ["entries", len(cache.answers)],
        ["bytes", cache.answers.size],
        ["redis", cache.config.redis or "(none: this process only)"],
    ]
    rows += [[f"invalidations.{source}", n] for source, n in sorted(c.invalidations.items())]
    rows += [[f"not_served.{why}", n] for why, n in sorted(c.fail_closed.items())]
    rows += [[f"not_stored.{why}", n] for why, n in sorted(c.skipped.items())]
    for database, (serving, lag) in sorted(cache.feeds().items()):
        rows.append([f"serving.{database}", "yes" if serving else "no"])
        rows.append([f"wal_lag_ms.{database}", "unknown" if lag == float("inf") else round(lag * 1000, 1)])
    return rows


def cache_families(cache: ResultCache) -> Iterator[Metric]:
    c = cache.counters
    for name, help_text, value in (
        ("pgwarden_cache_hits", "Statements answered from the result cache", c.hits),
        ("pgwarden_cache_misses", "Eligible statements the cache had no current answer for", c.misses),
        ("pgwarden_cache_stores", "Answers stored in the result cache", c.stores),
    ):
        counter = CounterMetricFamily(name, help_text)
        counter.add_metric([], value)
        yield counter
    for name, help_text, label, counts in (
        (
            "pgwarden_cache_invalidations",
            "Table version bumps and generation changes, by source",
            "source",
            c.invalidations,
        ),
        (
            "pgwarden_cache_not_served",
            "Lookups answered by PostgreSQL because the cache failed closed",
            "reason",
            c.fail_closed,
        ),
        ("pgwarden_cache_not_stored", "Answers of eligible statements not stored, by why", "reason", c.skipped),
    ):
        family = CounterMetricFamily(name, help_text, labels=[label])
        for key, n in sorted(counts.items()):
            family.add_metric([key], n)
        yield family
    size = GaugeMetricFamily("pgwarden_cache_bytes", "Bytes of answers held in this process")
    size.add_metric([], cache.answers.size)
    yield size
    serving = GaugeMetricFamily(
        "pgwarden_cache_serving",
        "1 while answers are served for the database (its WAL consumer within the bound)",
        labels=["database"],
    )
    lag = GaugeMetricFamily("pgwarden_cache_wal_lag_seconds", "How far the WAL consumer is behind", labels=["database"])
    for database, (ok, seconds) in sorted(cache.feeds().items()):
        serving.add_metric([database], 1 if ok else 0)
        lag.add_metric([database], seconds)
    yield from (serving, lag)
