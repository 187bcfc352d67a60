"""A fleet of 100,000 installations meets a server outage: what the server sees when it is back.

A discrete-event simulation driven by the agent's own retry policy (``callhome.backoff``: the wait
after each failure, whether a failure uses up a record's attempts, the replay of a backlog), not
by a copy of it. Time is bucketed by second.

- **Command-line runs** (70 %): each installation runs a few times a day at random; a run tracks
  a few events (one batch) and starts the product's sender, which tries while the run's records
  wait, retries within its idle time (30 s) and exits; what it leaves, the next run sends.
- **Daemons** (30 %): each tracks steadily (about one event a minute, some far more, some far
  less) and keeps a sender, which sends each record as it comes and retries when the shared
  backoff says.
- **The server** answers 503 to every request during the outage, and everything before and after.

``--policy old`` is the policy before this change, through the same functions with its new parts
turned off by their parameters: the first wait at most 1 s, every failure using up one of a
record's 12 attempts, the backlog sent at once. ``new`` is the current one.

Printed per policy and outage: the request rate per minute and per second (steady: the two hours
before the outage; peak: from the end of the outage on), the peak in the outage's first ten
minutes, records lost by reason, and the time from the end of the outage until 99 % of the
backlog (the records waiting then) was delivered. With matplotlib installed, a PNG of requests
per minute around each outage.

    python bench/fleet_sim.py [--policy old|new|both] [--installations 100000]
                              [--png-1h docs/fleet_1h.png] [--png-24h docs/fleet_24h.png] [--no-png]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import deque

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from callhome import backoff  # noqa: E402  (this checkout's, whatever is installed)

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
#: the answer during the outage: a transient failure
OUTAGE_STATUS = 503
#: the configuration's defaults (docs/configuration.md)
MAX_ATTEMPTS = 12
MAX_AGE = 7 * DAY
MAX_QUEUE = 50_000
SENDER_IDLE = 30.0
#: records a sender delivers per second from a backlog (a request each, ~100 ms round trips, two connections)
SEND_RATE = 20.0
CLI_SHARE = 0.7
#: hours simulated before the outage (the steady rate is measured there) and after it ends
BEFORE = 2 * HOUR
AFTER = {HOUR: 12 * HOUR, DAY: 36 * HOUR}
TARGETS = {HOUR: 6 * HOUR, DAY: 30 * HOUR}


class Policy:
    """The parameters of ``callhome.backoff`` that make a policy."""

    def __init__(self, name: str, base: float, transient: frozenset, stretch: float) -> None:
        self.name, self.base, self.transient, self.stretch = name, base, transient, stretch


POLICIES = {
    "old": Policy("old", base=1.0, transient=frozenset(), stretch=0.0),
    "new": Policy("new", base=backoff.BASE, transient=backoff.TRANSIENT, stretch=backoff.REPLAY_STRETCH),
}


class Fleet:
    """The installations: their kind, how much they track, when command-line runs happen."""

    def __init__(self, installations: int, horizon: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        clis = int(installations * CLI_SHARE)
        daemons = installations - clis
        # events per minute: log-normal, mean 1, from one every 20 minutes to 10 a minute
        self.daemon_rates = np.clip(rng.lognormal(-0.5, 1.0, daemons), 0.05, 10.0) / MINUTE
        runs_per_day = rng.uniform(2.0, 6.0, clis)
        counts = rng.poisson(runs_per_day * horizon / DAY)
        owner = np.repeat(np.arange(clis), counts)
        at = rng.uniform(0.0, horizon, counts.sum())
        order = np.lexsort((at, owner))
        self.run_at = at[order]
        self.run_events = 1 + rng.poisson(2.0, counts.sum())  # a few events per run: one batch
        self.run_bounds = np.concatenate(([0], np.cumsum(counts)))
        self.clis, self.daemons = clis, daemons


class Daemon:
    """One daemon through the outage, attempt by attempt: which batch each failed attempt took (the
    queue sends by not-before time), what the attempts cap dropped, when the rest went once back.

    A daemon's records are one per batch (it publishes a batch every 0.2 s).
    """

    def __init__(self, sim: Run, created: list) -> None:
        self.sim, self.created = sim, created
        self.not_before = created[:]
        self.tries = [0] * len(created)
        self.fresh = 0  # the oldest record not tried yet
        self.retried: deque = deque()  # tried, by not-before time (each later than the previous)

    def front(self, now: float) -> int | None:
        """The batch the sender takes at ``now``: the earliest not-before time that is due."""
        fresh = self.created[self.fresh] if self.fresh < len(self.created) else None
        if self.retried and self.not_before[self.retried[0]] <= now \
                and (fresh is None or self.not_before[self.retried[0]] <= fresh):
            return self.retried.popleft()
        if fresh is not None and fresh <= now:
            self.fresh += 1
            return self.fresh - 1
        return None

    def run(self, at: float, latest: float) -> tuple:
        """From the first failure at ``at`` to the first success: (when, delivery times, records in order)."""
        sim, failures, alive = self.sim, 0, [True] * len(self.created)
        while True:
            taken = self.front(at)
            if taken is None:  # nothing due: the sender sends the next record as it comes
                if self.fresh == len(self.created):  # none before ``latest``: the attempts cap emptied it
                    return latest, np.array([]), []
                at = self.created[self.fresh]
                continue
            if sim.up(at):
                break
            sim._fails.append(at)
            failures += 1
            until = at + sim.wait(failures)
            self.tries[taken] += sim.counts()
            if self.tries[taken] >= MAX_ATTEMPTS:
                alive[taken] = False
                sim.lose("retries", 1, self.created[taken])
            else:
                self.not_before[taken] = until
                self.retried.append(taken)
            at = until
        # back at `at`, `taken` on the wire: the backlog is what was created by then
        order = [taken] + [i for i in range(len(self.created))
                           if alive[i] and i != taken and self.created[i] <= at]
        if len(order) > MAX_QUEUE:
            sim.lose("queue_full", len(order) - MAX_QUEUE, self.created[order[1]])
            order = [taken] + order[len(order) - MAX_QUEUE + 1:]
        created, not_before = [self.created[i] for i in order], [self.not_before[i] for i in order]
        due = np.array(sim.replay(created, not_before, at, at))
        now = due <= at
        due[now] = at + np.arange(int(now.sum())) / SEND_RATE  # due now: back to back
        return at, due, order


class Run:
    """One simulation: a fleet, a policy, an outage; the requests per second and what was lost."""

    def __init__(self, fleet: Fleet, policy: Policy, outage: float, seed: int) -> None:
        self.fleet, self.policy = fleet, policy
        self.start, self.end = BEFORE, BEFORE + outage
        self.horizon = self.end + AFTER[outage]
        self.seconds = int(self.horizon) + 1
        self.np = np.random.default_rng(seed)
        self.py = random.Random(seed)
        self.ok = np.zeros(self.seconds, dtype=np.int64)
        self.failed = np.zeros(self.seconds, dtype=np.int64)
        self.lost = {"retries": 0, "expired": 0, "queue_full": 0}
        self.pending_at_end = 0
        #: delivery times of the records that were waiting when the outage ended, and how many never were
        self.backlog_sent: list = []
        self.backlog_missing = 0
        self._sent: list = []
        self._held = 0
        self._fails: list = []
        #: the command-line runs' deliveries, gathered (a NumPy call per batch would be slow): times, creation
        self._runs_sent: list = []
        self._runs_created: list = []
        self._rate_cut = np.zeros(self.seconds + 1)

    # -- helpers ---------------------------------------------------------------------------------
    def up(self, at: float) -> bool:
        return not self.start <= at < self.end

    def wait(self, failures: int) -> float:
        return backoff.delay(failures, base=self.policy.base, rng=self.py.random)

    def counts(self) -> bool:
        return backoff.counts_against(OUTAGE_STATUS, transient=self.policy.transient)

    def replay(self, created: list, not_before: list, held_until: float, now: float) -> list:
        return backoff.replay(created, not_before, held_until, now, MAX_AGE / 2, stretch=self.policy.stretch)

    def deliver(self, sent: np.ndarray, created: np.ndarray) -> None:
        """Records delivered at ``sent`` (unless the age limit or the end of the simulation came first)."""
        expired = sent - created > MAX_AGE
        late = sent >= self.horizon
        self.lost["expired"] += int(expired.sum())
        self.pending_at_end += int((late & ~expired).sum())
        keep = ~(expired | late)
        self._sent.append(sent[keep])
        self._held += len(sent)
        backlog = (created < self.end) & (sent >= self.end)  # waiting when the outage ended
        self.backlog_sent.append(sent[keep & backlog])
        self.backlog_missing += int((backlog & ~keep).sum())
        if self._held > 2_000_000:
            self._flush()

    def _flush(self) -> None:
        if self._sent:
            self.ok += np.bincount(np.concatenate(self._sent).astype(np.int64), minlength=self.seconds)
            self._sent, self._held = [], 0
        if self._fails:
            self.failed += np.bincount(np.asarray(self._fails).astype(np.int64), minlength=self.seconds)
            self._fails = []

    # -- the simulation ----------------------------------------------------------------------------
    def run(self) -> Run:
        for index in range(self.fleet.daemons):
            self.daemon(float(self.fleet.daemon_rates[index]))
        for index in range(self.fleet.clis):
            self.cli(index)
        self.deliver(np.array(self._runs_sent), np.array(self._runs_created))
        self.steady_daemons()
        self._flush()
        return self

    def daemon(self, rate: float) -> None:
        """A daemon: every record goes as it is created, except from the outage's first failure
        until the first success (simulated record by record); the rest is :meth:`steady_daemons`."""
        first = self.start + self.np.exponential(1.0 / rate)  # its first record in the outage
        if first >= self.end:  # nothing tracked during the outage: untouched
            self.cut(self.start, first, rate)
            self.deliver(np.array([first]), np.array([first]))
            return
        # its records up to the latest it can be back (a wait is at most MAX_DELAY)
        latest = self.end + backoff.MAX_DELAY
        more = np.sort(self.np.uniform(first, latest, self.np.poisson(rate * (latest - first))))
        created = np.concatenate(([first], more))
        back, sent, order = Daemon(self, created.tolist()).run(first, latest)
        self.cut(self.start, back, rate)
        self.deliver(sent, created[order])

    def lose(self, reason: str, records: int, created: float) -> None:
        self.lost[reason] += records
        if created < self.end:
            self.backlog_missing += records

    def cut(self, start: float, end: float, rate: float) -> None:
        """The daemon's steady rate does not apply over ``[start, end)`` (simulated one by one there)."""
        self._rate_cut[int(start)] += rate
        self._rate_cut[min(int(end), self.seconds)] -= rate

    def steady_daemons(self) -> None:
        rates = self.fleet.daemon_rates.sum() - np.cumsum(self._rate_cut)[:self.seconds]
        self.ok += self.np.poisson(np.maximum(rates, 0.0))

    def cli(self, index: int) -> None:
        """One command-line installation, run by run: its queue, the shared backoff, its senders."""
        lo, hi = self.fleet.run_bounds[index], self.fleet.run_bounds[index + 1]
        queue: list = []  # [created, not_before, attempts, records]
        shared = {"until": 0.0, "failures": 0}
        for at, events in zip(self.fleet.run_at[lo:hi].tolist(), self.fleet.run_events[lo:hi].tolist()):
            queue.append([at, at, 0, events])
            if at >= shared["until"]:  # a host starts no sender while the product backs off
                self.sender(queue, shared, at)
        for created, _, _, records in queue:  # still waiting when the simulation ends
            self.pending_at_end += records
            self.backlog_missing += records if created < self.end else 0

    def sender(self, queue: list, shared: dict, now: float) -> None:
        """A sender started by a run at ``now``: it sends what is due, retries when the backoff says,
        and exits once idle for ``SENDER_IDLE``."""
        idle_from = now
        while queue:
            queue.sort(key=lambda b: b[1])
            now = max(now, queue[0][1], shared["until"])
            if now > idle_from + SENDER_IDLE or now >= self.horizon:
                return
            if not self.up(now):
                self.fail(queue, shared, now)
                continue
            if shared["failures"]:
                self.end_streak(queue, shared, now)
            now = self.send_due(queue, now)
            idle_from = now

    def fail(self, queue: list, shared: dict, now: float) -> None:
        self._fails.append(now)
        shared["failures"] += 1
        shared["until"] = now + self.wait(shared["failures"])
        batch = queue[0]
        batch[2] += self.counts()
        if batch[2] >= MAX_ATTEMPTS:
            self.lose("retries", batch[3], batch[0])
            queue.pop(0)
        else:
            batch[1] = shared["until"]

    def end_streak(self, queue: list, shared: dict, now: float) -> None:
        due = self.replay([b[0] for b in queue], [b[1] for b in queue], shared["until"], now)
        for batch, not_before in zip(queue[1:], due[1:]):  # the first is on the wire
            batch[1] = not_before
        shared["failures"], shared["until"] = 0, 0.0

    def send_due(self, queue: list, now: float) -> float:
        """Send every batch due at ``now``, record after record; when the sender is done."""
        due = [b for b in queue if b[1] <= now]
        queue[:] = [b for b in queue if b[1] > now]
        for created, _, _, records in due:
            for _ in range(records):
                self._runs_sent.append(now)
                self._runs_created.append(created)
                now += 1.0 / SEND_RATE
        return now

    # -- figures -----------------------------------------------------------------------------------
    def figures(self) -> dict:
        requests = self.ok + self.failed
        minutes = requests[:len(requests) // 60 * 60].reshape(-1, 60).sum(axis=1)
        start, end = int(self.start), int(self.end)
        steady_s = requests[:start].mean()
        steady_m = minutes[:start // 60].mean()
        after_m = minutes[end // 60:]
        sent = np.sort(np.concatenate(self.backlog_sent)) if self.backlog_sent else np.array([])
        total = len(sent) + self.backlog_missing
        needed = int(np.ceil(0.99 * total))
        drained = float(sent[needed - 1] - self.end) if 0 < needed <= len(sent) else None
        return {
            "steady_min": steady_m, "peak_min": after_m.max(), "steady_s": steady_s,
            "peak_s": requests[end:].max(), "outage_start_min": minutes[start // 60:start // 60 + 10].max(),
            "lost": dict(self.lost), "backlog": total, "drained_99": drained,
            "pending_at_end": self.pending_at_end, "minutes": minutes,
        }


def report(outage: float, name: str, f: dict) -> str:
    lost = ", ".join(f"{k} {v:,}" for k, v in f["lost"].items())
    drained = f"{f['drained_99'] / HOUR:.1f} h" if f["drained_99"] is not None else "never (lost)"
    return (f"{_label(outage):>4} {name:>4} | {f['steady_min']:>8,.0f} {f['peak_min']:>9,.0f} "
            f"{f['peak_min'] / f['steady_min']:>5.2f}x | {f['steady_s']:>6,.0f} {f['peak_s']:>7,.0f} "
            f"{f['peak_s'] / f['steady_s']:>5.2f}x | {f['outage_start_min'] / f['steady_min']:>5.2f}x | "
            f"{f['backlog']:>10,} {drained:>12} | {lost}")


def _label(outage: float) -> str:
    return "1 h" if outage == HOUR else "24 h"


def plot(path: str, outage: float, results: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"(no matplotlib: {path} not written; pip install matplotlib)")
        return
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, f in results.items():
        hours = (np.arange(len(f["minutes"])) * MINUTE - BEFORE) / HOUR
        ax.plot(hours, f["minutes"], lw=0.8, label=f"{name} policy")
    steady = next(iter(results.values()))["steady_min"]
    ax.axhline(2 * steady, color="grey", ls=":", lw=0.8, label="2x steady")
    ax.axvspan(0, outage / HOUR, color="red", alpha=0.08, label="outage")
    ax.set_yscale("log")
    ax.set_xlabel("hours since the outage began")
    ax.set_ylabel("requests per minute (log)")
    ax.set_title(f"100,000 installations, a {_label(outage)} outage: requests per minute")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", choices=["old", "new", "both"], default="both")
    parser.add_argument("--installations", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--png-1h", default=os.path.join("docs", "fleet_1h.png"))
    parser.add_argument("--png-24h", default=os.path.join("docs", "fleet_24h.png"))
    parser.add_argument("--no-png", action="store_true", help="print the figures only")
    args = parser.parse_args()
    names = ["old", "new"] if args.policy == "both" else [args.policy]

    print(f"{args.installations:,} installations ({CLI_SHARE:.0%} command-line runs, the rest daemons); "
          f"new policy: first wait <= {backoff.BASE:g} s, transient failures "
          f"{sorted(map(str, backoff.TRANSIENT))} "
          f"do not use up attempts, replay {backoff.REPLAY_STRETCH:g}x slower than created")
    print(" out  pol |   req/min steady      peak ratio |  req/s steady   peak ratio | outage start | "
          "   backlog  99% drained | lost")
    ok = True
    for outage, path in ((HOUR, args.png_1h), (DAY, args.png_24h)):
        fleet = Fleet(args.installations, BEFORE + outage + AFTER[outage], args.seed)
        results = {}
        for name in names:
            began = time.perf_counter()
            results[name] = Run(fleet, POLICIES[name], outage, args.seed).run().figures()
            took = time.perf_counter() - began
            print(report(outage, name, results[name]) + f"  ({took:.0f} s)", flush=True)
            if name == "new":
                ok &= _meets_targets(outage, results[name])
        if not args.no_png:
            plot(path, outage, results)
    print("targets (new policy): peak <= 2x steady per minute, <= 3x per second, nothing lost but to the "
          f"age limit, 99 % drained within 6 h (1 h outage) / 30 h (24 h): {'met' if ok else 'NOT MET'}")
    return 0 if ok else 1


def _meets_targets(outage: float, f: dict) -> bool:
    lost = sum(v for k, v in f["lost"].items() if k != "expired")
    return (f["peak_min"] <= 2 * f["steady_min"] and f["peak_s"] <= 3 * f["steady_s"] and lost == 0
            and f["drained_99"] is not None and f["drained_99"] <= TARGETS[outage])


if __name__ == "__main__":
    sys.exit(main())
