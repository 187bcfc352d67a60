"""The short-lived CLI of benchmark 3: the one-line init, one event, exit (no explicit flush).

    python bench/_cli_host.py ENDPOINT DATA_DIR

callhome's defaults apply (automatic CALL_HOME once a day, a 50 ms exit budget); only what the
benchmark needs is set: a loopback endpoint, a domain, a throw-away state directory, and
``send_in_ci`` (CI=true would switch telemetry off otherwise).
"""
import sys

import callhome

callhome.init(product_id="bench-cli", api_key="bench-key", endpoint=sys.argv[1], domain="example.com",
              data_dir=sys.argv[2], send_in_ci=True)
callhome.track("cli_run", meta={"cmd": "build"})
