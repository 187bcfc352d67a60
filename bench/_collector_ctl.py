"""callhome's collector in its own process, with fault injection driven over stdin (for ``delivery.py``).

    python bench/_collector_ctl.py PORT DB API_KEY

Runs :class:`callhome.collector.CollectorServer` (SQLite file ``DB``) on 127.0.0.1:PORT, then
reads one JSON command a line and answers each with one JSON line on stdout:

- ``{"op": "fail", "action": "hang:0.3"}``: ``app.fail_all(action)`` (``null`` clears it);
- ``{"op": "stats"}``: ``store.stats()`` (``events``, ``requests``, ``duplicates``, ...);
- ``{"op": "count", "activity": "cli_run"}``: how many records of that activity are stored;
- ``{"op": "rows", "activity": "cli_run"}``: ``[event_id, received_at, meta]`` of every stored
  record of that activity, in the order received, and the count of every activity.

End of input stops the server.
"""
import json
import sys

from callhome.collector import CollectorServer


def main() -> None:
    port, db, api_key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    server = CollectorServer(port=port, db=db, api_keys=[api_key])
    store = server.store
    try:
        for line in sys.stdin:
            command = json.loads(line)
            op = command["op"]
            if op == "fail":
                server.app.fail_all(command["action"])
                answer: object = {"ok": True}
            elif op == "stats":
                answer = store.stats()
            elif op == "count":
                answer = {"count": store.query("SELECT COUNT(*) FROM events WHERE activity_type = ?",
                                               (command["activity"],))[0][0]}
            elif op == "rows":
                rows = store.query("SELECT event_id, received_at, payload FROM events "
                                   "WHERE activity_type = ? ORDER BY received_at", (command["activity"],))
                answer = {"rows": [[e, at, json.loads(p).get("meta", {})] for e, at, p in rows],
                          "activities": dict(store.query("SELECT activity_type, COUNT(*) FROM events "
                                                         "GROUP BY activity_type"))}
            else:
                answer = {"error": f"unknown op {op!r}"}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        server.stop()
        store.close()


if __name__ == "__main__":
    main()
