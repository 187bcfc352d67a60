from conftest import PRODUCT


def test_events_reach_the_collector(make_agent, collector):
    agent = make_agent()
    ids = [agent.track("secondary1", meta={"i": i}) for i in range(5)]
    assert agent.flush(10)
    received = {e["event_id"] for e in collector.store.events(limit=100)}
    assert set(ids) <= received
    assert agent.status()["delivered"] == 5
    assert all(e["product_id"] == PRODUCT for e in collector.store.events(limit=100))
