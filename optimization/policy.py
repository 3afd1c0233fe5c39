"""Which policy is the default, and the rule that decides it (torch-free: the API reads it).

The default is decided by measurement, not belief: ``tally bench engine`` runs every policy on the same
jobs at the same wall-clock budget, and ``choose_default`` names the winner. See "The engine at the
default budget" in docs/measured.md for the figures behind ``DEFAULT_POLICY``; a model entry may override
it with its own measured winner (``ModelSpec.default_policy``).
"""

from .config import ModelSpec, Policy

DEFAULT_POLICY = Policy.resample
MARGIN = 1.10  # run-to-run noise of clean images per second on the benchmark
MAX_FALSE_VERIFIED = 0.01  # a policy that fools its verifier more often than this is never a default


def default_for(spec: ModelSpec, deployment: Policy = DEFAULT_POLICY) -> Policy:
    """A model's default policy: its own measured winner, else the deployment's (``Settings.default_policy``)."""
    return spec.default_policy or deployment


def choose_default(clean_per_s: dict[str, float], false_verified: dict[str, float] | None = None) -> Policy:
    """The policy with the most clean (verified and correct) images per second among those whose false-verified
    rate (judged by an independent counter) is at most ``MAX_FALSE_VERIFIED``, however fast the others are; a
    token or noise policy must beat plain resampling by more than the noise to earn its place."""
    false_verified = false_verified or {}
    eligible = {p: v for p, v in clean_per_s.items() if false_verified.get(p, 0.0) <= MAX_FALSE_VERIFIED}
    if not eligible:
        return DEFAULT_POLICY
    best = max(eligible, key=eligible.get)
    if Policy.resample in eligible and eligible[best] <= MARGIN * eligible[Policy.resample]:
        return Policy.resample
    return Policy(best)
