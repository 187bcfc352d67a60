"""The collector's dashboard (``GET /``): numbers on the page, escaping, keys, and a real Chromium.

Run as a script (``python tests/test_dashboard.py``) to regenerate ``docs/dashboard.png`` from demo
data: 3 products, a few installations each, 30 days.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from callhome.collector import CollectorServer, dashboard, reports
from callhome.collector.dashboard import parse_user_agent
from callhome.schema import AGGREGATE_PATH, USAGE_PATH

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = "/usr/bin/chromium"
DAY = 86400
UA = {"linux": "{p}/{v} callhome/0.3.0 (Linux 6.1.0-18-amd64; x86_64) Python/3.11.2",
      "mac": "{p}/{v} callhome/0.3.0 (Darwin 23.4.0; arm64) Python/3.12.1",
      "windows": "{p}/{v} callhome/0.2.9 (Windows 10.0.19045; AMD64) Python/3.10.11"}


def event(product: str, activity: str, install: str, at: int, os_name: str = "linux",
          version: str = "1.0.0", user: str | None = None, **extra) -> dict:
    """A valid usage payload as the agent sends it."""
    payload = {"activity_type": activity, "source": "TELEMETRY", "domain": "example.com",
               "event_id": str(uuid.uuid4()), "event_at": at, "product_id": product,
               "user_agent": UA[os_name].format(p=product, v=version),
               "meta": {"installation_id": install, "callhome_version": UA[os_name].split("callhome/")[1][:5],
                        "product_version": version}}
    if user is not None:
        payload.update(user_id=user, user_id_type="USERNAME")
    payload.update(extra)
    return payload


def post(server: CollectorServer, payload: dict, path: str = USAGE_PATH) -> None:
    answer = requests.post(server.url + path, json={"payload": payload}, timeout=5)
    assert answer.status_code == 200, answer.text


@pytest.fixture
def populated():
    """Two products: acme-cli (2 Linux installs, 1 Mac; 3 users) and beta-db (1 Windows install)."""
    now = int(time.time())
    with CollectorServer() as server:
        for payload in [
            event("acme-cli", "build", "inst-aaaa-1111", now - 60, user="alice"),
            event("acme-cli", "build", "inst-aaaa-1111", now - 2 * DAY, user="alice"),
            event("acme-cli", "build", "inst-bbbb-2222", now - 3 * DAY, user="bob", version="1.1.0"),
            event("acme-cli", "deploy", "inst-bbbb-2222", now - 120, user="bob", version="1.1.0"),
            event("acme-cli", "deploy", "inst-cccc-3333", now - 5 * DAY, os_name="mac"),
            event("acme-cli", "<script>alert(1)</script>", "inst-cccc-3333", now - 30, os_name="mac"),
            event("beta-db", "query", "inst-dddd-4444", now - 10, os_name="windows", version="2.0.0"),
            # 40 days ago: outside every window, counted nowhere
            event("acme-cli", "build", "inst-eeee-5555", now - 40 * DAY, user="old"),
        ]:
            post(server, payload)
        post(server, {**event("beta-db", "query", "inst-dddd-4444", now - 5, os_name="windows",
                              version="2.0.0"), "mode": "DOMAIN", "count": 12, "user_agent": None},
             AGGREGATE_PATH)
        yield server


def page(server: CollectorServer, path: str = "/", **kwargs) -> requests.Response:
    return requests.get(server.url + path, timeout=10, **kwargs)


def section(text: str, product: str) -> str:
    """The HTML of one product's section."""
    match = re.search(rf'<section id="p\d+"><h2>{re.escape(product)}</h2>.*?</section>', text, re.S)
    assert match, f"no section for {product}"
    return match.group(0)


def kpi(text: str, label: str) -> int:
    match = re.search(rf'<span class="value">([\d,]+)</span><span class="label">{re.escape(label)}</span>', text)
    assert match, label
    return int(match.group(1).replace(",", ""))


def legend(text: str, name: str) -> int:
    match = re.search(rf'</span>{re.escape(name)} <b>([\d,]+)</b></li>', text)
    assert match, name
    return int(match.group(1).replace(",", ""))


def daily(text: str, series: str) -> int:
    """The sum of a line chart's daily values, read from the points' tooltips."""
    return sum(int(n) for n in re.findall(rf"<title>\d{{4}}-\d\d-\d\d: (\d+) {series}</title>", text))


def share(text: str, name: str) -> int:
    match = re.search(rf'<tr><td>{re.escape(name)}</td><td class="n">(\d+)</td>', text)
    assert match, name
    return int(match.group(1))


# -- the page -------------------------------------------------------------------------------------
def test_dashboard_is_html_with_a_strict_policy(populated):
    answer = page(populated)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src" not in answer.headers["Content-Security-Policy"]  # default-src 'none' forbids scripts
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.text.startswith("<!DOCTYPE html>")
    assert page(populated, "/dashboard").text.count("<section") == 2
    assert requests.head(populated.url + "/", timeout=5).status_code == 200


def test_mau_and_totals_per_product(populated):
    text = page(populated).text
    acme, beta = section(text, "acme-cli"), section(text, "beta-db")
    # users: alice, bob, and the anonymous Mac installation; the 40-day-old "old" is out of the window
    assert kpi(acme, "MAU (users)") == 3 and kpi(acme, "MAU (installations)") == 3
    assert kpi(acme, "Events, 30 days") == 6 and kpi(acme, "Installations seen") == 3
    assert kpi(beta, "MAU (users)") == 1 and kpi(beta, "Events, 30 days") == 13  # 1 + an aggregate of 12


def test_mau_matches_the_current_mau_report(populated):
    since, until = reports.window(reports.MAU_DAYS, time.time())
    pairs = populated.store.identities("acme-cli", since, until)
    assert kpi(section(page(populated).text, "acme-cli"), "MAU (users)") == reports.count_identities(pairs)


def test_counts_per_activity_and_daily_actives(populated):
    acme = section(page(populated).text, "acme-cli")
    assert legend(acme, "build") == 3 and legend(acme, "deploy") == 2
    assert legend(acme, "&lt;script&gt;alert(1)&lt;/script&gt;") == 1
    # daily actives: today alice, bob, cccc; 2 days ago alice; 3 days ago bob; 5 days ago cccc
    assert daily(acme, "installations") == daily(acme, "users") == 6
    assert "avg 0.2/day" in acme  # 6 active installation-days over 30 days


def test_versions_and_os_mix(populated):
    text = page(populated).text
    acme, beta = section(text, "acme-cli"), section(text, "beta-db")
    assert share(acme, "Linux x86_64") == 2 and share(acme, "Darwin arm64") == 1
    assert share(acme, "1.0.0") == 2 and share(acme, "1.1.0") == 1 and share(acme, "0.3.0") == 3
    assert share(beta, "Windows AMD64") == 1 and share(beta, "2.0.0") == 1 and share(beta, "0.2.9") == 1


def test_last_events_table(populated):
    acme = section(page(populated).text, "acme-cli")
    rows = re.findall(r"<tr><td>(\d{4}-\d\d-\d\d [\d:]+)</td><td>(.*?)</td><td class=\"mono\"[^>]*>(.*?)</td>"
                      r"<td>(.*?)</td></tr>", acme)
    assert len(rows) == 6  # the 40-day-old record arrived just now, but happened outside the window
    assert ("build", "inst-aaa", "alice") in {(a, i, u) for _, a, i, u in rows}
    assert [when for when, *_ in rows] == sorted((when for when, *_ in rows), reverse=True)
    assert "—" in {u for *_, u in rows}  # the anonymous Mac installation


def test_payload_strings_are_escaped(populated):
    text = page(populated).text
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_an_empty_collector_says_so():
    with CollectorServer() as server:
        assert "No events in the last 30 days." in page(server).text


def test_parse_user_agent():
    assert parse_user_agent(UA["linux"]) == ("Linux", "6.1.0-18-amd64", "x86_64")
    assert parse_user_agent(UA["windows"]) == ("Windows", "10.0.19045", "AMD64")
    assert parse_user_agent("curl/8.0") is None and parse_user_agent(None) is None


def test_every_agent_supplied_string_is_escaped():
    """Product id, activity, versions, OS, user and installation ids are all the sender's choice."""
    now = int(time.time())
    evil = '"><img src=x onerror=alert(1)>'
    payload = event("acme" + evil, "build" + evil, "inst" + evil, now - 5, user="alice" + evil,
                    version="1.0" + evil, user_agent=f"x (Linux{evil} 6.1; x86_64{evil})")
    payload["meta"]["callhome_version"] = "0.3" + evil
    with CollectorServer() as server:
        post(server, payload)
        text = page(server).text
    assert "<img" not in text and 'onerror=alert(1)>' not in text
    # every one of the seven values is on the page, escaped (some twice: a title and a cell)
    assert text.count("&quot;&gt;&lt;img src=x onerror=alert(1)&gt;") >= 7


def test_products_per_page_are_bounded(monkeypatch):
    """Anyone with an ingest key can invent product ids: the page shows the busiest few, and says so."""
    monkeypatch.setattr(dashboard, "MAX_PRODUCTS", 3)
    now = int(time.time())
    with CollectorServer() as server:
        for n in range(6):  # product-n has n + 1 records
            for _ in range(n + 1):
                post(server, event(f"product-{n}", "build", f"inst-{n}", now - 5))
        text = page(server).text
    assert re.findall(r'<section id="p\d+"><h2>(.*?)</h2>', text) == ["product-3", "product-4", "product-5"]
    assert "This page may be incomplete" in text


def test_an_activity_called_other_keeps_its_events():
    now = int(time.time())
    with CollectorServer() as server:
        for _ in range(5):
            post(server, event("acme-cli", "(other)", "inst-1", now - 5))
        for n in range(8):  # 9 activities in all: the least frequent are folded into "(other)"
            post(server, event("acme-cli", f"activity-{n}", "inst-1", now - 5))
        acme = section(page(server).text, "acme-cli")
    assert kpi(acme, "Events, 30 days") == 13
    assert legend(acme, "(other)") == 5 + 2  # its own 5, and the 2 least frequent activities


def test_sessions_and_exceptions_have_their_own_charts_not_the_activity_one():
    now = int(time.time())
    rng = random.Random(3)
    with CollectorServer() as server:
        post(server, event("acme-cli", "build", "inst-1", now - 5))
        for record in usage_records(rng, "acme-cli", "inst-1", now // DAY * DAY, now, "linux", "1.0.0"):
            post(server, record)
        acme = section(page(server).text, "acme-cli")
    assert legend(acme, "build") == 1
    assert "</span>SESSION <b>" not in acme and "</span>EXCEPTION <b>" not in acme
    assert kpi(acme, "Sessions, 30 days") == 1


def test_pages_are_built_one_at_a_time():
    """A page at MAX_ROWS holds a few hundred MB while it is built: concurrent views must not add up."""
    now = int(time.time())
    with CollectorServer() as server:
        for n in range(3000):
            server.store.add("usage", event("acme-cli", f"a{n % 5}", f"inst-{n % 300}", now - n % 29 * DAY))
        tracemalloc.start()
        try:
            assert page(server).status_code == 200
            alone = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            with ThreadPoolExecutor(6) as pool:
                assert {answer.status_code for answer in pool.map(lambda _: page(server), range(6))} == {200}
            together = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert together < 2 * alone, (alone, together)


# -- keys ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("report_keys", [(), ("read-key",)])
def test_the_dashboard_needs_the_read_key_when_keys_are_configured(report_keys):
    good = report_keys[0] if report_keys else "ingest-key"
    with CollectorServer(api_keys=["ingest-key"], report_keys=report_keys) as server:
        refused = page(server)
        assert refused.status_code == 401 and 'name="key"' in refused.text  # a form to type the key
        assert page(server, params={"key": "wrong"}).status_code == 401
        assert page(server, params={"key": good}).status_code == 200
        assert page(server, headers={"Authorization": f"Bearer {good}"}).status_code == 200
        if report_keys:  # an ingest key ships inside products: it never reads usage data
            assert page(server, params={"key": "ingest-key"}).status_code == 401
            assert page(server, headers={"X-API-KEY": "ingest-key"}).status_code == 401
        else:
            assert page(server, headers={"X-API-KEY": good}).status_code == 200


def test_the_key_is_never_echoed_into_the_page():
    with CollectorServer(report_keys=["read-key-0123"]) as server:
        post(server, event("acme-cli", "build", "inst-1", int(time.time()) - 5))
        opened = page(server, params={"key": "read-key-0123"})
        refused = page(server, params={"key": "wrong-key-4567"})
    assert opened.status_code == 200 and "read-key-0123" not in opened.text
    assert refused.status_code == 401 and "wrong-key-4567" not in refused.text
    assert opened.headers["Referrer-Policy"] == "no-referrer"  # nor sent on as a referrer


def test_a_non_ascii_key_opens_the_dashboard_from_the_address_bar():
    # A browser sends the typed key as UTF-8, percent-encoded; it must match the configured key.
    with CollectorServer(report_keys=["clé-ключ"]) as server:
        assert page(server, params={"key": "clé-ключ"}).status_code == 200
        assert page(server, params={"key": "clé-клюx"}).status_code == 401


# -- a real browser -----------------------------------------------------------------------------
def chromium(url: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url`` with a throwaway profile and nothing phoning home."""
    with tempfile.TemporaryDirectory() as profile:
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   f"--user-data-dir={profile}", "--window-size=1280,900", *args, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="chromium not installed")


@needs_chromium
def test_chromium_renders_the_dashboard(populated, tmp_path):
    url = f"{populated.url}/"
    shot = tmp_path / "dash.png"
    done = chromium(url, f"--screenshot={shot}")
    assert shot.exists() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    dom = chromium(url, "--dump-dom").stdout
    acme = section(dom, "acme-cli")
    assert kpi(acme, "MAU (users)") == 3 and legend(acme, "build") == 3
    assert share(acme, "Darwin arm64") == 1 and "<svg" in acme
    assert "<script>" not in dom


@needs_chromium
def test_chromium_opens_a_keyed_dashboard_with_the_key_in_the_url(tmp_path):
    with CollectorServer(report_keys=["read-key"]) as server:
        post(server, event("acme-cli", "build", "inst-1", int(time.time()) - 5))
        assert "Key required" in chromium(server.url + "/", "--dump-dom").stdout
        assert kpi(chromium(server.url + "/?key=read-key", "--dump-dom").stdout, "MAU (users)") == 1


# -- the screenshot in docs/ --------------------------------------------------------------------
def demo_payloads(now: int, seed: int = 7) -> list:
    """Plausible usage: 3 products, a few installations each, 30 days, weekday-heavy."""
    rng = random.Random(seed)
    products = {"acme-cli": (["build", "deploy", "test", "lint"], 9),
                "acme-server": (["start", "request_batch", "migrate"], 5),
                "acme-sdk": (["init", "upload", "download", "auth"], 6)}
    payloads = []
    for product, (activities, installs) in products.items():
        for _ in range(installs):
            install = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            os_name = rng.choices(["linux", "mac", "windows"], [6, 3, 1])[0]
            version = rng.choice(["1.4.0", "1.4.1", "1.5.0"])
            user = rng.choice([None, "ana", "ben", "chen", "dara"])  # some people use several machines
            for day in range(rng.randrange(0, 20), 30):  # installations appear over the month
                if rng.random() < (0.35 if (now // DAY - 29 + day) % 7 in (2, 3) else 0.85):
                    start_of_day = (now // DAY - 29 + day) * DAY
                    for _ in range(rng.randint(1, 6)):
                        at = start_of_day + rng.randrange(max(min(DAY, now - start_of_day), 1))  # not ahead
                        payloads.append(event(product, rng.choice(activities), install, at, os_name, version,
                                              user))
                    payloads.extend(usage_records(rng, product, install, start_of_day, now, os_name, version))
    return sorted(payloads, key=lambda payload: payload["event_at"])  # arrival order = usage order


def usage_records(rng: random.Random, product: str, install: str, start_of_day: int, now: int, os_name: str,
                  version: str) -> list:
    """A day's session (and now and then an exception) of one installation, as the agent sends them."""
    start = start_of_day + rng.randrange(max(min(DAY // 2, now - start_of_day - 1), 1))
    end = min(start + rng.randrange(300, 4 * 3600), now)
    session = event(product, "SESSION", install, end, os_name, version)
    session["meta"].update(record_type="session", session_id=str(uuid.uuid4()), session_kind="process",
                           session_start=start, session_end=end, duration=float(end - start), closed_by="exit")
    records = [session]
    if rng.random() < 0.15:
        crash = event(product, "EXCEPTION", install, end, os_name, version)
        crash["meta"].update(record_type="exception", handled=False, exception_function="run",
                             exception_class=rng.choice(["TimeoutError", "KeyError", "acme.errors.QuotaExceeded"]))
        records.append(crash)
    return records


def make_screenshot(target: str) -> None:
    with CollectorServer() as server:
        with requests.Session() as session:
            for payload in demo_payloads(int(time.time())):
                session.post(server.url + USAGE_PATH, json={"payload": payload}, timeout=5).raise_for_status()
        with tempfile.TemporaryDirectory() as tmp:
            shot = os.path.join(tmp, "dash.png")
            chromium(server.url + "/", f"--screenshot={shot}")
            shutil.copy(shot, target)
    print(f"wrote {target}")


if __name__ == "__main__":
    make_screenshot(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "docs", "dashboard.png"))
