"""Usage intelligence outside the /v3/ API: the pure functions of ``usage`` and the dashboard's
sessions, runtime and top exceptions (which reuse them, so page and API agree)."""

from __future__ import annotations

import datetime as dt
import html
import re
import time

import pytest
import requests
from test_revenera import call_home, custom, exception, feed, session

from callhome.collector import CollectorServer, dashboard, usage

DAY = 86400
EPOCH = dt.date(1970, 1, 1)


def epoch_day(text: str) -> int:
    return (dt.date.fromisoformat(text) - EPOCH).days


# -- pure functions --------------------------------------------------------------------------------
@pytest.mark.parametrize("split, labels", [
    ("day", ["2024-02-28", "2024-02-29", "2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"]),
    ("week", ["2024-02-26", "2024-03-04"]),  # Feb 26 - Mar 3 is one week across two months
    ("month", ["2024-02-01", "2024-03-01"]),
])
def test_buckets_are_labelled_by_their_period_and_hold_only_days_in_range(split, labels):
    buckets = usage.Buckets(epoch_day("2024-02-28"), epoch_day("2024-03-04"), split)
    assert buckets.labels == labels
    assert buckets.index(epoch_day("2024-02-27")) is None and buckets.index(epoch_day("2024-03-05")) is None
    assert buckets.index(epoch_day("2024-03-04")) == len(labels) - 1
    assert buckets.seconds == (epoch_day("2024-02-28") * DAY, epoch_day("2024-03-05") * DAY - 1)


def test_histogram_bins_are_half_open_and_the_last_is_open():
    bins = usage.histogram([0, 0.999, 1, 1.5, 2, 99.9, 100, 5000], [0, 1, 2, 100])
    assert bins == [{"from": 0, "to": 1, "clients": 2}, {"from": 1, "to": 2, "clients": 2},
                    {"from": 2, "to": 100, "clients": 2}, {"from": 100, "to": None, "clients": 2}]
    assert usage.histogram([0], [1, 2])[0]["clients"] == 0  # below the first edge: in no bin


def test_percent_of_active_rounds_and_leaves_empty_buckets_null():
    counts = {"new": [1, 2, 0], "active": [3, 3, 0], "lost": [0, 1, 2]}
    assert usage.percent_of_active(counts) == {"new": [33.3, 66.7, None], "active": [3, 3, 0],
                                               "lost": [0.0, 33.3, None]}


def test_client_properties_take_the_newest_non_null_value():
    spans = [usage.Span("a", 10, 30)]
    metas = [("a", {"os": None, "locale": "de_DE"}), ("a", {"os": "Linux", "locale": "en_US"}),
             ("b", {"os": "Windows"})]  # newest first; b is not on the page
    assert usage.client_properties(spans, metas, ["os", "locale", "arch"]) == [
        {"clientId": "a", "firstSeen": "1970-01-01T00:00:10Z", "lastSeen": "1970-01-01T00:00:30Z",
         "properties": {"os": "Linux", "locale": "de_DE", "arch": None}}]


# -- the dashboard ---------------------------------------------------------------------------------
def test_the_dashboard_shows_sessions_runtime_and_top_exceptions():
    now = int(time.time())
    today = now // DAY * DAY
    yesterday = today - DAY
    with CollectorServer() as server:
        feed(server, [
            session(yesterday + 100, "inst-1", 3600.0), session(yesterday + 200, "inst-2", 1800.0),
            session(today + 10, "inst-1", 5400.0),
            session(today - 40 * DAY, "inst-1", 9999.0),  # outside the 30 days
            exception(yesterday + 300, "inst-1", "ValueError"),
            exception(yesterday + 400, "inst-2", "ValueError"),
            exception(today + 5, "inst-2", "<script>alert(1)</script>"),
            call_home(today + 1, "inst-3"),
            custom(today + 2, "inst-9", "run", product="plain-product"),  # sends neither: no new block
        ])
        summaries, _ = dashboard.summarize(server.store, now)
        page = requests.get(server.url + "/", timeout=5).text
    product = next(s for s in summaries if s.product_id == "acme-cli")
    assert (product.sessions[-2], product.sessions[-1], sum(product.sessions)) == (2, 1, 3)
    assert (product.runtime_hours[-2], product.runtime_hours[-1]) == (1.5, 1.5)
    assert product.top_exceptions == [("ValueError", 2), ("<script>alert(1)</script>", 1)]
    plain = next(s for s in summaries if s.product_id == "plain-product")
    assert sum(plain.sessions) == 0 and plain.top_exceptions == []

    acme, other = page.split('<section id="p0">', 1)[1].split('<section id="p1">', 1)
    assert "Sessions, runtime and exceptions" in acme and "Sessions, runtime and exceptions" not in other
    kpis = dict((label, value) for value, label in re.findall(
        r'<span class="value">([^<]+)</span><span class="label">([^<]+)</span>', acme))
    assert (kpis["Sessions, 30 days"], kpis["Runtime hours, 30 days"], kpis["Exceptions, 30 days"]) == \
        ("3", "3.0", "3")
    day = dt.datetime.fromtimestamp(yesterday, dt.timezone.utc).date()
    assert f"<title>{day}: 2 sessions</title>" in acme and f"<title>{day}: 1.5 runtime hours</title>" in acme
    table = acme.split("Top exceptions")[1]
    rows = re.findall(r'<tr><td class="mono">([^<]*)</td><td class="n">(\d+)</td>', table)
    assert [(html.unescape(name), int(n)) for name, n in rows] == [("ValueError", 2),
                                                                   ("<script>alert(1)</script>", 1)]
    assert "<script>alert" not in page  # escaped like every payload string
