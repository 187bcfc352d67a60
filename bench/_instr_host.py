"""The host that ``track_instructions.py`` runs under callgrind: N calls of one kind on the main thread.

    python bench/_instr_host.py KIND N DATA_DIR

The server is down (a closed port), so nothing is delivered; one call and a short pause before
the loop start each SDK's background thread, so that what the loop measures is the steady call.
"""
import os
import socket
import sys
import time


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


def settle() -> None:
    """Let the SDK's threads finish starting (imports, a first failed connection): under valgrind
    that takes seconds, and work they do during the loop would be counted against it."""
    time.sleep(float(os.environ.get("CALLHOME_BENCH_SETTLE", "3")))


def main() -> None:
    kind, n, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    url = closed_port_url()
    if kind.startswith("callhome"):
        if kind == "callhome-refused":
            os.environ["DO_NOT_TRACK"] = "1"
        import callhome

        callhome.init(product_id="bench-instr", api_key="bench-key", endpoint=url, domain="example.com",
                      data_dir=data_dir, call_home_interval=0, sessions=False, send_in_ci=True,
                      sender="thread")
        track, count = callhome.track, callhome.count
        track("warm")
        count("warm")
        settle()
        if kind == "callhome-count":
            for _ in range(n):
                count("paced")
        else:
            for i in range(n):
                track("paced", meta={"seq": i})
    elif kind == "posthog":
        from posthog import Posthog

        client = Posthog("phc_key", host=url)
        client.capture("warm", distinct_id="user-1")
        settle()
        for i in range(n):
            client.capture("paced", distinct_id="user-1", properties={"seq": i})
    elif kind == "segment":
        from segment.analytics import Client

        client = Client("wkey", host=url)
        client.track("user-1", "warm")
        settle()
        for i in range(n):
            client.track("user-1", "paced", {"seq": i})
    os._exit(0)  # no exit hooks: what they do is not the call's cost


if __name__ == "__main__":
    main()
