"""The short run of ``delivery.py short``: init, two events, exit (no flush()).

    python bench/_short_host.py ENDPOINT DATA_DIR

callhome's defaults apply (a 50 ms exit budget, the product's sender started as a detached
process); only what the benchmark needs is set: a loopback endpoint, a domain, a throw-away state
directory, no CALL_HOME (so that exactly two ``cli_run`` events per run are counted) and
``send_in_ci`` (CI=true would switch telemetry off otherwise).
"""
import sys

import callhome

callhome.init(product_id="bench-short", api_key="bench-key", endpoint=sys.argv[1], domain="example.com",
              data_dir=sys.argv[2], call_home_interval=0, send_in_ci=True)
callhome.track("cli_run", meta={"cmd": "build"})
callhome.track("cli_run", meta={"cmd": "test"})
