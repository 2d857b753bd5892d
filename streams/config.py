"""The policy's pipeline-wide knobs, made from the settings."""
from __future__ import annotations

from agents import policy
from agents.rate_limit import GlobalLimiter, Limits
from herald.settings import Settings


def policy_config(settings: Settings) -> policy.PolicyConfig:
    """``PolicyConfig`` from ``settings``; raises ValueError (saying what is wrong) for a bad setting."""
    global_limits = {}
    if settings.global_rate_per_s > 0:
        burst = max(1, int(settings.global_rate_per_s))
        global_limits = {channel: GlobalLimiter(settings.global_rate_per_s, burst=burst) for channel in policy.LIMITED}
    return policy.PolicyConfig(
        dedup_window_s=settings.dedup_window_s,
        dedup_window_by_type=settings.dedup_windows(),
        limits=Limits(settings.rate_per_minute, settings.rate_per_hour, settings.rate_per_day),
        batch_window_s=settings.batch_window_s or None,
        digest_period_s=settings.digest_period_s or None,
        global_limits=global_limits,
    )
