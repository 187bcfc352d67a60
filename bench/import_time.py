"""Benchmark 1: cumulative import time of ``import callhome`` against ``import posthog`` and
``import segment.analytics``, from ``python -X importtime -c "import X"`` (median of --runs).

Two interpreters are measured:

* this one, as configured (its ``site`` runs whatever ``.pth`` hooks site-packages holds; they
  may import stdlib modules such as ``re`` or ``threading`` before the statement runs, which
  then cost ``import callhome`` nothing);
* a clean one: a throw-away ``venv --without-pip`` of the same Python (no ``.pth`` hooks), with
  the checkout and this interpreter's site-packages on ``PYTHONPATH`` (which runs no ``.pth``).

Both with cached bytecode, as an installed wheel has (see ``_common.PYCACHE``), after a warm-up
run. Also: whether ``requests``, ``filelock``, ``platformdirs`` or ``urllib3`` appear in the
import tree of ``import callhome`` (they must not).

    python bench/import_time.py [--runs 9]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import _common as c

MODULES = {"callhome": "callhome", "posthog": "posthog", "segment": "segment.analytics"}
FORBIDDEN = ("requests", "filelock", "platformdirs", "urllib3")
GOAL_MS = 10.0
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)\s*$")


def parse(stderr: str) -> tuple[float, list]:
    """(cumulative ms of the statement's top-level imports, [(name, self µs, cumulative µs, depth)]).

    The statement's imports are those after the interpreter's own ``site``; the top-level ones
    (one space of indent) are summed so that ``segment`` + ``segment.analytics`` both count.
    """
    rows = []
    for line in stderr.splitlines():
        m = _LINE.match(line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2)), (len(m.group(3)) - 1) // 2))
    last_site = max((i for i, r in enumerate(rows) if r[0] == "site" and r[3] == 0), default=-1)
    statement = rows[last_site + 1:]
    total_us = sum(r[2] for r in statement if r[3] == 0)
    return total_us / 1000.0, statement


def importtime(python: str, module: str, env: dict) -> tuple[float, list]:
    done = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"], env=env,
                          capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=120)
    if done.returncode:
        raise RuntimeError(f"import {module} failed under {python}:\n{done.stderr[-2000:]}")
    return parse(done.stderr)


def preloaded(python: str, env: dict) -> list:
    """Stdlib modules callhome uses that this interpreter has imported before any statement runs."""
    probe = "import sys; print(' '.join(sorted(sys.modules)))"
    names = set(subprocess.run([python, "-c", probe], env=env, capture_output=True, text=True).stdout.split())
    wanted = ("re", "enum", "functools", "collections", "threading", "weakref", "math")
    return [m for m in wanted if m in names]


def measure(python: str, env: dict, sdks: list, runs: int) -> dict:
    samples: dict = {sdk: [] for sdk in sdks}
    trees: dict = {}
    for sdk in sdks:  # warm-up: compiles bytecode into the cache
        importtime(python, MODULES[sdk], env)
    for _ in range(runs):  # interleaved, so a noisy moment hits every SDK alike
        for sdk in sdks:
            ms, tree = importtime(python, MODULES[sdk], env)
            samples[sdk].append(ms)
            trees[sdk] = tree
    return {"median_ms": {sdk: c.median(v) for sdk, v in samples.items()},
            "samples_ms": samples, "tree": trees.get("callhome", [])}


def run(runs: int = 9, quiet: bool = False) -> dict:
    say = (lambda *a: None) if quiet else print
    sdks = ["callhome", *c.available_peers(say)]
    env = c.child_env()
    result: dict = {"runs": runs, "sdks": sdks}
    result["this"] = measure(sys.executable, env, sdks, runs)
    result["this"]["preloaded"] = preloaded(sys.executable, env)
    with tempfile.TemporaryDirectory(prefix="callhome-bench-import-") as tmp:
        python, clean_env = c.clean_python(tmp)
        if python is None:
            say(f"  clean interpreter: skipped: {clean_env}")
            result["clean"] = None
        else:
            result["clean"] = measure(python, clean_env, sdks, runs)
            result["clean"]["preloaded"] = preloaded(python, clean_env)
        # From source: no bytecode at all (what an editable checkout costs under PYTHONDONTWRITEBYTECODE=1).
        nocache = c.child_env(PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=os.path.join(tmp, "empty"))
        result["source_ms"] = c.median([importtime(sys.executable, "callhome", nocache)[0]
                                        for _ in range(runs)])
    for label in ("this", "clean"):
        if result.get(label):
            names = {r[0] for r in result[label]["tree"]}
            result[label]["third_party"] = sorted(m for m in names if m.split(".")[0] in FORBIDDEN)
    if not quiet:
        report(result)
    return result


def report(r: dict) -> None:
    c.banner(f"1. import time (cumulative, median of {r['runs']} runs, cached bytecode)")
    for label, title in (("this", "this interpreter"), ("clean", "clean interpreter (venv, no .pth hooks)")):
        m = r.get(label)
        if not m:
            continue
        med = m["median_ms"]
        ch = med["callhome"]
        parts = [f"callhome {ch:.1f} ms"]
        for sdk in ("posthog", "segment"):
            if sdk in med:
                x = c.fmt_ratio(c.ratio(med[sdk], ch))
                parts.append(f"{MODULES[sdk]} {med[sdk]:.1f} ms ({x} callhome)")
        print(f"  {title}: " + "; ".join(parts))
        verdict = "met" if ch <= GOAL_MS else f"MISSED by {ch - GOAL_MS:.1f} ms"
        print(f"    goal <= {GOAL_MS:.0f} ms: {verdict}; "
              f"stdlib modules already imported at startup: {', '.join(m['preloaded']) or 'none'}")
        print("    third-party modules in the tree of `import callhome`: "
              f"{', '.join(m['third_party']) or 'none'}")
    print(f"  from source (no bytecode cache, this interpreter): callhome {r['source_ms']:.1f} ms")
    clean = r.get("clean") or r["this"]
    heavy = sorted(clean["tree"], key=lambda row: -row[1])[:8]
    print("  largest self times in the callhome tree (clean interpreter if available): " +
          ", ".join(f"{name} {own / 1000:.1f}" for name, own, _, _ in heavy) + " (ms)")


def rows(r: dict) -> list:
    out = []
    for label, what in (("this", "`import` cumulative ms, this interpreter"),
                        ("clean", "`import` cumulative ms, clean interpreter (no .pth hooks)")):
        m = r.get(label)
        if not m:
            continue
        med = m["median_ms"]
        ch = med["callhome"]
        out.append(c.Row(what, c.fmt(ch), c.fmt(med.get("posthog")), c.fmt(med.get("segment")),
                         " / ".join(c.fmt_ratio(c.ratio(med.get(sdk), ch)) for sdk in ("posthog", "segment")),
                         f"<= {GOAL_MS:.0f} ms", ch <= GOAL_MS))
    tp = sorted(set((r.get("clean") or {}).get("third_party", [])) | set(r["this"]["third_party"]))
    out.append(c.Row("requests/filelock/platformdirs/urllib3 imported by `import callhome`",
                     ", ".join(tp) or "none", "", "", "", "none", not tp))
    out.append(c.Row("`import callhome` from source, no bytecode "
                     "(editable checkout, PYTHONDONTWRITEBYTECODE=1)",
                     c.fmt(r["source_ms"]), "", "", "", "(info)", None))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="runs per module (default 9; at least 7)")
    args = parser.parse_args()
    run(max(args.runs, 1))


if __name__ == "__main__":
    main()
