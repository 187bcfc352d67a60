"""The collector's dashboard: ``GET /``, one server-rendered HTML page of usage per product.

Per product: daily active installations and users and events per activity over the last 30 UTC
days (inline SVG charts), MAU counted exactly as the ``CURRENT_MAU`` report counts it, the last
events, and the agent versions and OS mix of the installations seen. No JavaScript, no external
resource: the page works offline and under a ``Content-Security-Policy`` that forbids scripts.
Everything taken from a payload is escaped with :func:`html.escape`. Standard library only.

:func:`summarize` reads the store (pure data, testable without HTML); :func:`render` turns the
summaries into the page.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from callhome.collector import reports, usage

if TYPE_CHECKING:
    from callhome.collector.store import Store

__all__ = ["DAYS", "HEADERS", "LAST_EVENTS", "MAX_ROWS", "ProductSummary", "parse_user_agent", "render",
           "render_page", "request_key", "summarize", "unauthorized_page"]

DAYS = 30
LAST_EVENTS = 20
#: Records read per page view. The dashboard is for a self-hosted collector's recent weeks; past
#: this many the page says so (MAU still comes from an exact SQL query, unaffected).
MAX_ROWS = 100_000
#: Products shown per page, those with the most records: any holder of an ingest key (which ships
#: inside products) can invent product ids, and each costs a query and a section.
MAX_PRODUCTS = 50
#: Activities drawn one by one; the rest share one "other" band, so the legend stays readable.
MAX_ACTIVITIES = 7
OTHER = "(other)"
SHARE_ROWS = 8  # values listed per version/OS table; the rest are summed into "(other)"
PALETTE = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#94a3b8")
#: The page needs no script and no outside resource: forbid both, in case escaping ever failed.
HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the key may be in the URL
    "X-Content-Type-Options": "nosniff",
}
# The agent's user agent: "product/1.2 callhome/0.3 (Linux 6.1.0; x86_64) Python/3.11.2".
_PLATFORM = re.compile(r"\(([^;()]+?)\s+([^;()\s]+);\s*([^;()]+?)\)")
#: One page is computed at a time: a page at :data:`MAX_ROWS` holds a few hundred MB while it is
#: built, and concurrent viewers (or a reload loop) must not multiply that.
_RENDERING = threading.Lock()

Series = tuple[str, Sequence[float], str]  # (name, one value per day, colour)


@dataclass
class ProductSummary:
    """What the dashboard shows for one product; every count is over ``days`` (UTC calendar days)."""

    product_id: str
    days: list[dt.date]
    active_installs: list[int]
    active_users: list[int]
    activities: dict[str, list[int]]  # activity -> events per day, most frequent first
    mau_users: int = 0
    mau_installs: int = 0
    last_events: list[dict[str, Any]] = field(default_factory=list)
    product_versions: Counter[str] = field(default_factory=Counter)  # installations per version
    agent_versions: Counter[str] = field(default_factory=Counter)
    os_mix: Counter[str] = field(default_factory=Counter)
    # Usage intelligence (issue 6), exact SQL over the window like MAU, not cut by MAX_ROWS:
    sessions: list[int] = field(default_factory=list)  # sessions ended per day
    runtime_hours: list[float] = field(default_factory=list)  # their runtime per day
    top_exceptions: list[tuple[str, int]] = field(default_factory=list)  # (class, records), most first

    @property
    def events_total(self) -> int:
        return sum(sum(values) for values in self.activities.values())


# -- data ------------------------------------------------------------------------------------------
def summarize(store: Store, now: float) -> tuple[list[ProductSummary], bool]:
    """One summary per product with records in the window (at most :data:`MAX_PRODUCTS`), and whether
    the page is incomplete: :data:`MAX_ROWS` cut the read, or products were left out."""
    # ``since`` filters on arrival time; one extra day keeps events that arrived just after midnight.
    rows = store.events(limit=MAX_ROWS + 1, since=now - (DAYS + 1) * reports.DAY)
    truncated = len(rows) > MAX_ROWS
    first = _first_day(now)
    by_product: dict[str, list[dict[str, Any]]] = {}
    for row in rows[:MAX_ROWS]:
        # A late backlog can carry older events: everything on the page is about the same 30 days.
        if _day_index(row.get("event_at"), first) is not None:
            by_product.setdefault(str(row["product_id"]), []).append(row)
    if len(by_product) > MAX_PRODUCTS:
        busiest = sorted(by_product, key=lambda product: (-len(by_product[product]), product))[:MAX_PRODUCTS]
        by_product, truncated = {product: by_product[product] for product in busiest}, True
    return [_summary(store, product, records, now) for product, records in sorted(by_product.items())], truncated


_OWN_CHARTS = frozenset({"session", "exception"})  # record types the page charts separately


def _first_day(now: float) -> int:
    """The window's first UTC day, in days since the epoch."""
    return int(now // reports.DAY) - (DAYS - 1)


def _summary(store: Store, product: str, rows: list[dict[str, Any]], now: float) -> ProductSummary:
    """``rows``: the product's records inside the window, newest first."""
    first = _first_day(now)
    days = [dt.date(1970, 1, 1) + dt.timedelta(days=first + i) for i in range(DAYS)]
    pairs: list[set[tuple[Any, Any]]] = [set() for _ in days]
    activities: dict[str, list[int]] = {}
    for row in rows:
        index = _day_index(row["event_at"], first)
        assert index is not None  # summarize() passes only the window's rows
        pairs[index].add(_identity_pair(row["payload"]))
        if (row["payload"].get("meta") or {}).get("record_type") in _OWN_CHARTS:
            continue  # they have their own charts; here they would drown the product's own events
        per_day = activities.setdefault(str(row.get("activity_type")), [0] * DAYS)
        per_day[index] += int(row.get("count") or 1)  # an aggregate record stands for `count` events
    since, until = reports.window(reports.MAU_DAYS, now)
    window = store.identities(product, since, until)
    summary = ProductSummary(
        product, days,
        active_installs=[reports.count_identities(p, "install") for p in pairs],
        active_users=[reports.count_identities(p, "user") for p in pairs],
        activities=_top_activities(activities),
        mau_users=reports.count_identities(window, "user"),
        mau_installs=reports.count_identities(window, "install"),
        # by event time: a backlog delivered late must not push the newest usage off the table
        last_events=sorted(rows, key=lambda row: row["event_at"], reverse=True)[:LAST_EVENTS])
    _count_installations(summary, rows)
    _add_usage_intelligence(store, summary, first)
    return summary


def _add_usage_intelligence(store: Store, summary: ProductSummary, first: int) -> None:
    """Sessions, runtime and exceptions per the Revenera-style reports (:mod:`usage`), so the page and
    the ``/v3/`` API count the same records the same way."""
    since, until = first * reports.DAY, (first + DAYS) * reports.DAY - 1
    sessions = usage.read_sessions(store, summary.product_id, since, until)
    summary.sessions, hours = usage.per_day_sessions(sessions, first, DAYS)
    summary.runtime_hours = [round(value, 1) for value in hours]  # one decimal reads well in a tooltip
    exceptions = usage.read_exceptions(store, summary.product_id, since, until)
    summary.top_exceptions = usage.exception_counts(exceptions)


def _day_index(event_at: Any, first: int) -> int | None:
    if not isinstance(event_at, int) or isinstance(event_at, bool):
        return None
    index = event_at // reports.DAY - first
    return index if 0 <= index < DAYS else None


def _identity_pair(payload: dict[str, Any]) -> tuple[Any, Any]:
    return payload.get("user_id"), _meta(payload).get("installation_id")


def _meta(payload: dict[str, Any]) -> dict[str, Any]:
    meta = payload.get("meta")
    return meta if isinstance(meta, dict) else {}


def _top_activities(activities: dict[str, list[int]]) -> dict[str, list[int]]:
    ranked = sorted(activities.items(), key=lambda item: (-sum(item[1]), item[0]))
    if len(ranked) <= MAX_ACTIVITIES + 1:  # folding a single activity into "other" hides it for nothing
        return dict(ranked)
    shown = dict(ranked[:MAX_ACTIVITIES])
    # An activity may itself be called "(other)": add to it, never overwrite its counts.
    folded = shown.pop(OTHER, [0] * DAYS)
    other = [sum(day) for day in zip(folded, *(values for _, values in ranked[MAX_ACTIVITIES:]))]
    return {**shown, OTHER: other}


def _count_installations(summary: ProductSummary, rows: Iterable[dict[str, Any]]) -> None:
    """Versions and OS of each installation from its newest record that tells them: an upgrade moves
    it over, and an aggregate record without ``user_agent`` does not make its OS unknown."""
    latest: dict[str, dict[str, str]] = {}
    for row in rows:  # newest first
        payload = row["payload"]
        meta = _meta(payload)
        if meta.get("installation_id") is None:
            continue
        known = latest.setdefault(str(meta["installation_id"]), {})
        for name, value in (("product", meta.get("product_version")), ("agent", meta.get("callhome_version")),
                            ("os", _os_label(payload.get("user_agent")))):
            if value is not None:
                known.setdefault(name, str(value))
    for known in latest.values():
        summary.product_versions[known.get("product", "unknown")] += 1
        summary.agent_versions[known.get("agent", "unknown")] += 1
        summary.os_mix[known.get("os", "unknown")] += 1


def parse_user_agent(user_agent: Any) -> tuple[str, str, str] | None:
    """``(system, release, machine)`` from the agent's ``... (Linux 6.1.0; x86_64) ...``, else None."""
    match = _PLATFORM.search(user_agent) if isinstance(user_agent, str) else None
    return match.groups() if match else None  # type: ignore[return-value]


def _os_label(user_agent: Any) -> str | None:
    parsed = parse_user_agent(user_agent)
    return f"{parsed[0]} {parsed[2]}" if parsed else None


# -- HTTP helpers ----------------------------------------------------------------------------------
def request_key(environ: dict[str, Any]) -> str:
    """The key a request offers: ``?key=`` (a browser's address bar), else ``Authorization: Bearer``,
    else ``X-API-KEY``."""
    # latin-1 keeps each byte of the URL-decoded key as one character, as WSGI does for headers, so
    # the check sees the key's own bytes (UTF-8 from a browser), whatever its characters.
    query: dict[str, list[str]] = parse_qs(environ.get("QUERY_STRING", ""), encoding="latin-1")
    if query.get("key"):
        return query["key"][-1]
    authorization: str = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    key: str = environ.get("HTTP_X_API_KEY", "")
    return key


def render_page(store: Store, now: float) -> bytes:
    """The dashboard as UTF-8 bytes; one page at a time (see :data:`_RENDERING`)."""
    with _RENDERING:
        summaries, truncated = summarize(store, now)
        return render(summaries, now, truncated).encode("utf-8")


def unauthorized_page() -> bytes:
    """A 401 page with a form, so a browser user can type the key instead of editing the URL."""
    body = ('<h1>Key required</h1><p>This collector requires a key to show its dashboard.</p>'
            '<form method="get" action=""><label>Key <input type="password" name="key" autofocus>'
            '</label> <button type="submit">Open</button></form>')
    return _document("callhome collector: key required", body).encode("utf-8")


# -- HTML ------------------------------------------------------------------------------------------
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render(summaries: Sequence[ProductSummary], now: float, truncated: bool = False) -> str:
    """The whole page for ``summaries``."""
    generated = _utc(now).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#p{i}">{_e(s.product_id)}</a>' for i, s in enumerate(summaries))
    notes = [f"Generated {generated}. Days are UTC calendar days, counted by event time."]
    if truncated:
        notes.append(f"This page may be incomplete: it reads at most the newest {MAX_ROWS:,} records and "
                     f"shows at most the {MAX_PRODUCTS} products with the most of them (MAU is exact).")
    head = (f'<header><h1>callhome collector</h1><nav>{nav}</nav>'
            f'<p class="note">{" ".join(_e(n) for n in notes)}</p></header>')
    sections = "".join(_product_section(i, s) for i, s in enumerate(summaries))
    if not summaries:
        sections = f"<p class='empty'>No events in the last {DAYS} days.</p>"
    return _document("callhome collector dashboard", head + sections)


def _document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{_e(title)}</title><style>{_CSS}</style></head><body>{body}</body></html>')


def _product_section(index: int, summary: ProductSummary) -> str:
    installs = sum(summary.os_mix.values())
    kpis = "".join(_kpi(label, value) for label, value in (
        ("MAU (users)", summary.mau_users), ("MAU (installations)", summary.mau_installs),
        (f"Events, {DAYS} days", summary.events_total), ("Installations seen", installs)))
    active = _chart(summary.days, [("installations", summary.active_installs, PALETTE[0]),
                                   ("users", summary.active_users, PALETTE[1])], stacked=False)
    activity = _chart(summary.days, [(name, values, PALETTE[i % len(PALETTE)])
                                     for i, (name, values) in enumerate(summary.activities.items())],
                      stacked=True)
    shares = "".join(_share_table(title, counts, installs) for title, counts in (
        ("Product version", summary.product_versions), ("Agent (callhome) version", summary.agent_versions),
        ("OS", summary.os_mix)))
    return (f'<section id="p{index}"><h2>{_e(summary.product_id)}</h2><div class="kpis">{kpis}</div>'
            f'<div class="charts"><figure><figcaption>Daily active installations and users</figcaption>'
            f'{active}</figure><figure><figcaption>Events per activity per day</figcaption>{activity}'
            f'</figure></div><div class="shares">{shares}</div>'
            f'{_usage_block(summary)}'
            f'<h3>Last {LAST_EVENTS} events</h3>{_events_table(summary.last_events)}</section>')


def _usage_block(summary: ProductSummary) -> str:
    """Sessions and runtime per day and the top exceptions; nothing for a product whose agents
    send neither (older agents), so its section stays as it was."""
    if not any(summary.sessions) and not summary.top_exceptions:
        return ""
    exceptions = sum(count for _, count in summary.top_exceptions)
    kpis = "".join(_kpi(label, value) for label, value in (
        (f"Sessions, {DAYS} days", sum(summary.sessions)),
        (f"Runtime hours, {DAYS} days", round(sum(summary.runtime_hours), 1)),
        (f"Exceptions, {DAYS} days", exceptions)))
    sessions = _chart(summary.days, [("sessions", summary.sessions, PALETTE[2])], stacked=True)
    runtime = _chart(summary.days, [("runtime hours", summary.runtime_hours, PALETTE[4])], stacked=False)
    return (f'<h3>Sessions, runtime and exceptions</h3><div class="kpis">{kpis}</div>'
            f'<div class="charts"><figure><figcaption>Sessions per day</figcaption>{sessions}</figure>'
            f'<figure><figcaption>Runtime hours per day</figcaption>{runtime}</figure></div>'
            f'{_exceptions_table(summary.top_exceptions)}')


def _exceptions_table(top: Sequence[tuple[str, int]]) -> str:
    """Exception classes by records, with a bar of their share; past :data:`SHARE_ROWS`, one "(other)"."""
    total = sum(count for _, count in top)
    rows = "".join(
        f'<tr><td class="mono">{_e(name)}</td><td class="n">{count:,}</td><td class="bar"><span style="width:'
        f'{100 * count / max(total, 1):.0f}%"></span></td></tr>' for name, count in top[:SHARE_ROWS])
    rest = sum(count for _, count in top[SHARE_ROWS:])
    if rest:
        rows += f'<tr><td>{_e(OTHER)}</td><td class="n">{rest:,}</td><td></td></tr>'
    if not top:
        rows = '<tr><td class="empty" colspan="3">No exceptions.</td></tr>'
    return (f'<table class="exceptions"><caption>Top exceptions, {DAYS} days</caption><thead><tr>'
            f'<th>exception class</th><th class="n">records</th><th></th></tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def _kpi(label: str, value: float) -> str:
    return f'<div class="kpi"><span class="value">{value:,}</span><span class="label">{_e(label)}</span></div>'


def _share_table(title: str, counts: Counter[str], total: int) -> str:
    """Installations per value, each with a bar of its share."""
    rows = "".join(
        f'<tr><td>{_e(name)}</td><td class="n">{n}</td><td class="bar"><span style="width:'
        f'{100 * n / max(total, 1):.0f}%"></span></td></tr>' for name, n in counts.most_common(SHARE_ROWS))
    rest = sum(counts.values()) - sum(n for _, n in counts.most_common(SHARE_ROWS))
    if rest:
        rows += f'<tr><td>{_e(OTHER)}</td><td class="n">{rest}</td><td></td></tr>'
    return (f'<table class="share"><caption>{_e(title)}</caption><thead><tr><th></th>'
            f'<th class="n">installs</th><th></th></tr></thead><tbody>{rows}</tbody></table>')


def _events_table(rows: Sequence[dict[str, Any]]) -> str:
    body = "".join(
        f'<tr><td>{_e(_when(row.get("event_at")))}</td><td>{_e(_activity(row))}</td>'
        f'<td class="mono" title="{_e(_install(row))}">{_e(_install(row)[:8])}</td>'
        f'<td>{_e(row["payload"].get("user_id") or "—")}</td></tr>' for row in rows)
    return ('<table class="events"><thead><tr><th>time (UTC)</th><th>activity</th><th>installation</th>'
            f'<th>user</th></tr></thead><tbody>{body}</tbody></table>')


def _activity(row: dict[str, Any]) -> str:
    # An aggregate record stands for many events: say how many.
    suffix = "" if row.get("kind") == "usage" else f" ×{row.get('count')}"
    return f"{row.get('activity_type')}{suffix}"


def _install(row: dict[str, Any]) -> str:
    install = _meta(row["payload"]).get("installation_id")
    return "—" if install is None else str(install)


def _when(event_at: Any) -> str:
    return _utc(event_at).strftime("%Y-%m-%d %H:%M:%S") if isinstance(event_at, (int, float)) else "?"


def _utc(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc)


# -- SVG charts ------------------------------------------------------------------------------------
_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 560, 220, 40, 8, 10, 22


def _chart(days: Sequence[dt.date], series: Sequence[Series], stacked: bool) -> str:
    """Stacked bars or lines of ``series`` over ``days``, an axis frame and an HTML legend."""
    totals = [sum(values) for values in zip(*(v for _, v, _ in series))] if series else [0] * len(days)
    top = _nice_max(max(totals) if stacked else max((max(v) for _, v, _ in series), default=0))
    step = (_W - _LEFT - _RIGHT) / len(days)
    marks = _stacked_bars(days, series, top, step) if stacked else _lines(days, series, top, step)
    # Bars add up (events in the window); a daily-active line does not: it gets its daily average.
    legend = "".join(f'<li><span class="swatch" style="background:{colour}"></span>{_e(name)} '
                     f'<b>{_legend_value(values, stacked)}</b></li>' for name, values, colour in series)
    return (f'<svg viewBox="0 0 {_W} {_H}" role="img" xmlns="http://www.w3.org/2000/svg">'
            f'{_frame(days, top, step)}{marks}</svg><ul class="legend">{legend}</ul>')


def _legend_value(values: Sequence[float], stacked: bool) -> str:
    return f"{sum(values):,}" if stacked else f"avg {sum(values) / max(len(values), 1):,.1f}/day"


def _y(value: float, top: int) -> float:
    return _H - _BOTTOM - (_H - _TOP - _BOTTOM) * value / top


def _frame(days: Sequence[dt.date], top: int, step: float) -> str:
    """Grid lines with y labels, and a date label every week (the newest day always)."""
    parts = []
    for tick in range(0, top + 1, max(top // 4, 1)):
        y = _y(tick, top)
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                     f'<text class="axis" x="{_LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{tick:,}</text>')
    for i, day in enumerate(days):
        if (len(days) - 1 - i) % 7 == 0:
            x = _LEFT + step * (i + 0.5)
            parts.append(f'<text class="axis" x="{x:.1f}" y="{_H - 6}" text-anchor="middle">'
                         f'{day.strftime("%b")} {day.day}</text>')
    return "".join(parts)


def _stacked_bars(days: Sequence[dt.date], series: Sequence[Series], top: int, step: float) -> str:
    parts = []
    base: list[float] = [0] * len(days)
    for name, values, colour in series:
        for i, value in enumerate(values):
            if value:
                y0, y1 = _y(base[i], top), _y(base[i] + value, top)
                parts.append(f'<rect x="{_LEFT + step * i + 1:.1f}" y="{y1:.1f}" width="{step - 2:.1f}" '
                             f'height="{y0 - y1:.1f}" fill="{colour}"><title>{days[i]}: {value:,} '
                             f'{_e(name)}</title></rect>')
                base[i] += value
    return "".join(parts)


def _lines(days: Sequence[dt.date], series: Sequence[Series], top: int, step: float) -> str:
    parts = []
    for name, values, colour in series:
        points = [(_LEFT + step * (i + 0.5), _y(v, top)) for i, v in enumerate(values)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"><title>{days[i]}: '
                  f'{values[i]:,} {_e(name)}</title></circle>' for i, (x, y) in enumerate(points)]
    return "".join(parts)


def _nice_max(value: float) -> int:
    """Four grid steps of 1, 2, 5, 10, 20, 50, ... that reach ``value``: round axis labels."""
    step = 1
    while step * 4 < value:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2
    return step * 4


_CSS = """
*{box-sizing:border-box}
body{margin:0 auto;max-width:1240px;padding:16px 24px;font:14px/1.4 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif;color:#1e293b;background:#f8fafc}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 24px;border-bottom:1px solid #e2e8f0;
padding-bottom:8px}
h1{font-size:20px;margin:0}h2{font-size:18px;margin:0 0 8px}h3{font-size:14px;margin:12px 0 4px}
nav a{margin-right:12px;color:#2563eb;text-decoration:none;font-weight:600}
.note{flex-basis:100%;margin:0;color:#64748b;font-size:12px}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:14px 16px;margin:16px 0}
.kpis{display:flex;gap:12px;flex-wrap:wrap}
.kpi{border:1px solid #e2e8f0;border-radius:6px;padding:6px 14px;min-width:140px}
.kpi .value{display:block;font-size:24px;font-weight:700}.kpi .label{color:#64748b;font-size:12px}
.charts{display:grid;grid-template-columns:1fr 1fr;gap:16px;margin-top:8px}
figure{margin:0}figcaption{font-weight:600;margin:4px 0}svg{width:100%;height:auto;display:block}
.grid{stroke:#e2e8f0}.axis{font-size:10px;fill:#64748b}
.legend{list-style:none;padding:0;margin:2px 0;display:flex;flex-wrap:wrap;gap:2px 14px;font-size:12px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
.shares{display:grid;grid-template-columns:repeat(3,1fr);gap:16px;margin-top:8px}
table{border-collapse:collapse;width:100%;font-size:12px}
caption{text-align:left;font-weight:600;font-size:14px;padding:4px 0}
th,td{text-align:left;padding:2px 6px;border-bottom:1px solid #f1f5f9}th{color:#64748b;font-weight:600}
.n{text-align:right;font-variant-numeric:tabular-nums}.mono{font-family:ui-monospace,monospace}
.bar{width:40%}.bar span{display:block;height:8px;background:#93c5fd;border-radius:2px}
.empty{color:#64748b}
@media (max-width:900px){.charts,.shares{grid-template-columns:1fr}}
"""
