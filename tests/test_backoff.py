"""callhome.backoff: full-jitter exponential delays and Retry-After parsing."""

from __future__ import annotations

import random
from email.utils import formatdate

import pytest

from callhome.backoff import MAX_DELAY, delay, parse_retry_after

NOW = 1_795_440_000.0


@pytest.mark.parametrize("failures, ceiling", [
    (0, 1.0), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (10, 512.0), (12, 2048.0),
    (13, MAX_DELAY), (40, MAX_DELAY), (10 ** 6, MAX_DELAY),
])
def test_ceiling_doubles_up_to_the_cap(failures, ceiling):
    assert delay(failures, rng=lambda: 1.0) == ceiling
    assert delay(failures, rng=lambda: 0.0) == 0.0


def test_max_delay_is_one_hour():
    assert MAX_DELAY == 3600.0


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.75, 0.999])
def test_full_jitter_is_the_whole_range(fraction):
    assert delay(4, rng=lambda: fraction) == pytest.approx(8.0 * fraction)


@pytest.mark.parametrize("base, cap, failures, ceiling", [
    (0.5, 10.0, 1, 0.5), (0.5, 10.0, 4, 4.0), (0.5, 10.0, 6, 10.0), (2.0, 3600.0, 3, 8.0), (1.0, 1.0, 9, 1.0),
])
def test_base_and_cap(base, cap, failures, ceiling):
    assert delay(failures, base=base, cap=cap, rng=lambda: 1.0) == ceiling


def test_default_rng_spreads_over_the_range():
    random.seed(1234)
    samples = [delay(6) for _ in range(2000)]
    assert all(0.0 <= s <= 32.0 for s in samples)
    assert min(samples) < 1.0 and max(samples) > 31.0
    assert 12.0 < sum(samples) / len(samples) < 20.0   # uniform: mean 16


@pytest.mark.parametrize("value, expected", [
    ("2", 2.0),
    (" 120 ", 120.0),
    ("1.5", 1.5),
    ("0", 0.0),
    ("-5", 0.0),                                  # never a negative wait
    ("86400", 86400.0),
    ("999999999", 86400.0),                       # capped at a day
    ("inf", 86400.0),
    (formatdate(NOW + 30, usegmt=True), 30.0),    # HTTP-date
    (formatdate(NOW + 3600, usegmt=False), 3600.0),
    (formatdate(NOW - 600, usegmt=True), 0.0),    # a date in the past
    (formatdate(NOW + 10 ** 8, usegmt=True), 86400.0),
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "nan", "1,5", "Thu, 99 Foo 2026 25:61:00 GMT",
                                   "\u0000", "2 seconds", "Mon, 30 Feb 2026 10:00:00 GMT"])
def test_parse_retry_after_garbage_is_none(value):
    assert parse_retry_after(value, NOW) is None
