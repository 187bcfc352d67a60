"""Whether this product may send telemetry now, and if not, why.

Checked before the agent creates anything (thread, file, socket, exit hook) and again right
before every send. Opt-outs are absorbing: the first reason found wins and nothing later in the
order can turn telemetry back on; there is no force-enable variable.
"""

from __future__ import annotations

import os

from .config import Config, env_flag

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: init() runs on the host's thread
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CI_VARIABLES", "OPT_OUT_VARIABLES", "Decision", "decide", "detect_ci", "product_variable"]

#: Variables whose non-empty value means "this is a CI run" (one test per entry guards the list).
CI_VARIABLES = (
    "GITHUB_ACTIONS", "GITLAB_CI", "TF_BUILD", "BUILDKITE", "CIRCLECI", "TRAVIS", "APPVEYOR",
    "JENKINS_URL", "TEAMCITY_VERSION", "CODEBUILD_BUILD_ID", "BITBUCKET_BUILD_NUMBER",
    "BITBUCKET_COMMIT", "DRONE", "SEMAPHORE", "BUDDY", "JB_SPACE_API_URL", "CI_NAME",
    "CONTINUOUS_INTEGRATION",
)
#: ``BUILD_ID`` alone is too generic; with one of these it is Jenkins or Google Cloud Build.
_CI_PAIRS = (("BUILD_ID", "BUILD_URL"), ("BUILD_ID", "PROJECT_ID"))


class Decision:
    """The outcome of :func:`decide`: ``enabled``, and ``reason`` when it is not."""

    __slots__ = ("enabled", "reason", "is_ci")

    def __init__(self, enabled: bool, reason: str | None = None, is_ci: bool = False) -> None:
        self.enabled = enabled
        self.reason = reason
        self.is_ci = is_ci

    def __repr__(self) -> str:
        return f"Decision(enabled={self.enabled}, reason={self.reason!r})"


def product_variable(config: Config) -> str:
    """``<PRODUCT>_TELEMETRY_DISABLED``: ``product_id`` upper-cased, other characters as ``_``."""
    prefix = config.env_prefix or config.product_id
    # no ``re``: this runs on the host's thread at init(), where every import counts
    words = "".join(c if c.isascii() and c.isalnum() else " " for c in prefix.upper()).split()
    return "_".join(words) + "_TELEMETRY_DISABLED"


def detect_ci(environ: Mapping[str, str]) -> bool:
    """True when a CI system's marker variable is set (``CI`` honours explicit negatives)."""
    if env_flag(environ.get("CI")):
        return True
    if any((environ.get(name) or "").strip() for name in CI_VARIABLES):
        return True
    return any(all((environ.get(n) or "").strip() for n in pair) for pair in _CI_PAIRS)


#: The variables an end user sets to opt out of every product (each product adds its own).
OPT_OUT_VARIABLES = ("CALLHOME_DISABLED", "CALLHOME_DISABLE", "DO_NOT_TRACK")


def decide(config: Config, environ: Mapping[str, str] | None = None,
           choices: Mapping[str, object] | None = None) -> Decision:
    """Apply the precedence of ``docs/privacy.md``; the first opt-out found is the reason.

    :param choices: what ``callhome enable``/``disable`` saved (``choices.load``), once the
        worker has read it; the host's thread decides on the environment alone.
    """
    environ = os.environ if environ is None else environ
    if not config.enabled:
        return Decision(False, "disabled by the host application (enabled=False)")
    if config.endpoint_refused:
        return Decision(False, config.endpoint_refused)
    for name in (*OPT_OUT_VARIABLES, product_variable(config), *config.optout_env):
        if env_flag(environ.get(name)):
            return Decision(False, f"disabled by {name}={environ.get(name, '').strip()}")
    choices = choices or {}
    if choices.get("disabled"):
        return Decision(False, f"disabled by `disable` (saved in {choices.get('disabled_by')})")
    is_ci = detect_ci(environ)
    if is_ci and not config.send_in_ci:
        return Decision(False, "CI detected; the host did not set send_in_ci=True", is_ci=True)
    if config.consent == "opt-in" and choices.get("loaded") and not choices.get("consent"):
        return Decision(False, "waiting for consent: the product asks before sending (run `enable`)", is_ci)
    return Decision(True, None, is_ci=is_ci)
