"""callhome.schema.validate: one valid payload per endpoint, one mutation per row, the field blamed."""

from __future__ import annotations

import time

import pytest

from callhome.schema import validate

NOW = 1_795_440_000
DELETE = object()

USAGE = {
    "activity_type": "secondary1",
    "source": "TELEMETRY",
    "environment": "PRODUCTION",
    "domain": "acme.example",
    "event_id": "4b4f8a63-7c1e-4a53-9d1c-2f6f1c2b9a10",
    "event_at": NOW - 60,
    "product_id": "acme-cli",
    "user_agent": "acme-cli/1.0 callhome/0.1.0 (Linux 6.1; x86_64) Python/3.11.7",
    "meta": {"command": "build", "ok": True, "n": 3, "ratio": 0.5, "absent": None},
}
AGGREGATE = dict(USAGE, mode="DOMAIN", count=12)


def mutated(base: dict, **changes: object) -> dict:
    payload = dict(base)
    for key, value in changes.items():
        if value is DELETE:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload


def test_base_payloads_are_valid():
    assert validate(USAGE, "usage", now=NOW) == []
    assert validate(AGGREGATE, "aggregate", now=NOW) == []


USER = {"user_id": "dev@acme.example", "user_id_type": "EMAIL"}

VALID = [
    ("usage", dict(ip_addr="203.0.113.7", domain=DELETE)),
    ("usage", dict(ip_addr="2001:db8::1")),
    ("usage", dict(domain="acme.example.")),
    ("usage", dict(meta=DELETE)),
    ("usage", dict(environment=DELETE)),
    ("usage", dict(USER)),
    ("usage", dict(USER, user_agent=DELETE)),
    ("usage", dict(USER, source="PRODUCT_CLOUD", domain=DELETE)),
    ("usage", dict(event_at=NOW + 86000)),
    ("usage", dict(event_at=946684800)),
    ("usage", dict(activity_type="x" * 1024)),
    ("aggregate", dict(user_agent=DELETE)),
    ("aggregate", dict(USER, mode="USER", source="PRODUCT_CLOUD")),
    ("aggregate", dict(count=1)),
]


@pytest.mark.parametrize("kind, changes", VALID)
def test_valid_variant(kind, changes):
    base = USAGE if kind == "usage" else AGGREGATE
    assert validate(mutated(base, **changes), kind, now=NOW) == []


INVALID = [
    # unknown and empty fields
    ("both", dict(brand_new_field=1), "brand_new_field"),
    ("usage", dict(mode="DOMAIN"), "mode"),                     # an aggregate-only field
    ("both", dict(ip_addr="203.0.113.7", domain=""), "domain"),  # "" placeholder, ip_addr suffices
    ("both", dict(USER, user_id=""), "user_id"),
    # required strings
    ("both", dict(activity_type=DELETE), "activity_type"),
    ("both", dict(activity_type=""), "activity_type"),
    ("both", dict(activity_type=7), "activity_type"),
    ("both", dict(activity_type="a\nb"), "activity_type"),
    ("both", dict(activity_type="x" * 1025), "activity_type"),
    ("both", dict(product_id=DELETE), "product_id"),
    ("both", dict(product_id=["acme"]), "product_id"),
    ("both", dict(environment=5), "environment"),
    ("both", dict(user_agent="ua\r\ninjected: 1"), "user_agent"),
    # source, user, identity
    ("both", dict(source=DELETE), "source"),
    ("both", dict(source="telemetry"), "source"),
    ("both", dict(source="SAAS_PRODUCT"), "source"),
    ("usage", dict(user_id="dev@acme.example"), "user_id_type"),
    ("both", dict(user_id_type="EMAIL"), "user_id_type"),
    ("usage", dict(user_id="dev", user_id_type="FACEBOOK"), "user_id_type"),
    ("usage", dict(user_id="dev", user_id_type="email"), "user_id_type"),
    ("both", dict(ip_addr="not-an-ip"), "ip_addr"),
    ("both", dict(ip_addr="999.1.1.1"), "ip_addr"),
    ("both", dict(ip_addr=2130706433), "ip_addr"),
    ("both", dict(domain="not a domain"), "domain"),
    ("both", dict(domain="-acme.example"), "domain"),
    ("both", dict(domain=DELETE), "ip_addr"),                   # TELEMETRY needs ip_addr or domain
    ("usage", dict(user_agent=DELETE), "user_agent"),           # required when user_id is absent
    # event_id
    ("both", dict(event_id=DELETE), "event_id"),
    ("both", dict(event_id=1231231232), "event_id"),
    ("both", dict(event_id=""), "event_id"),
    ("both", dict(event_id="x" * 129), "event_id"),
    # event_at
    ("both", dict(event_at=DELETE), "event_at"),
    ("both", dict(event_at=str(NOW)), "event_at"),
    ("both", dict(event_at=float(NOW)), "event_at"),
    ("both", dict(event_at=True), "event_at"),
    ("both", dict(event_at=639303296), "event_at"),             # the documentation's 1990 example
    ("both", dict(event_at=946684799), "event_at"),
    ("both", dict(event_at=NOW + 86401), "event_at"),
    ("both", dict(event_at=(NOW - 60) * 1000), "event_at"),     # milliseconds
    # meta
    ("both", dict(meta=["command", "build"]), "meta"),
    ("both", dict(meta="command=build"), "meta"),
    ("both", dict(meta={f"k{i}": i for i in range(65)}), "meta"),
    ("both", dict(meta={"nested": {"a": 1}}), "meta.nested"),
    ("both", dict(meta={"list": [1, 2]}), "meta.list"),
    # aggregate only
    ("aggregate", dict(mode=DELETE), "mode"),
    ("aggregate", dict(mode="domain"), "mode"),
    ("aggregate", dict(mode="USER"), "mode"),                    # needs PRODUCT_CLOUD and a user
    ("aggregate", dict(USER, mode="USER"), "mode"),              # TELEMETRY source
    ("aggregate", dict(USER), "user_id"),                        # DOMAIN mode carries no user
    ("aggregate", dict(USER, mode="USER", source="PRODUCT_CLOUD", user_id_type="FACEBOOK"), "user_id_type"),
    ("aggregate", dict(mode="USER", source="PRODUCT_CLOUD", user_id="dev"), "user_id_type"),
    ("aggregate", dict(count=DELETE), "count"),
    ("aggregate", dict(count=0), "count"),
    ("aggregate", dict(count=-2), "count"),
    ("aggregate", dict(count=True), "count"),
    ("aggregate", dict(count="12"), "count"),
    ("aggregate", dict(count=1.5), "count"),
]


@pytest.mark.parametrize("kind, changes, field", [
    pytest.param(kind, changes, field, id=f"{kind}-{i}-{field}")
    for i, (where, changes, field) in enumerate(INVALID)
    for kind in (("usage", "aggregate") if where == "both" else (where,))
])
def test_invalid_variant_names_the_field(kind, changes, field):
    base = USAGE if kind == "usage" else AGGREGATE
    errors = validate(mutated(base, **changes), kind, now=NOW)
    assert {e.field for e in errors} == {field}, errors
    assert all(e.message for e in errors)


@pytest.mark.parametrize("payload", [None, [], "payload", 42, [USAGE]])
def test_not_an_object(payload):
    assert [e.field for e in validate(payload, "usage", now=NOW)] == ["payload"]


def test_errors_are_reported_together():
    errors = validate(mutated(USAGE, activity_type=DELETE, event_id=DELETE, source="WEB"), "usage", now=NOW)
    assert {"activity_type", "event_id", "source"} <= {e.field for e in errors}
    assert errors[0].as_dict() == {"field": errors[0].field, "message": errors[0].message}


def test_default_now_is_the_current_time():
    assert validate(USAGE, "usage") == []          # event_at a minute before NOW is in the past
    assert [e.field for e in validate(mutated(USAGE, event_at=int(time.time()) + 2 * 86400))] == ["event_at"]
