"""Which policy is the default, and the rule that decides it (torch-free: the API reads it).

The default is decided by measurement, not belief: ``tally bench engine`` runs every policy on the same
jobs at the same wall-clock budget, and ``choose_default`` names the winner. See the README's "Which
policy is the default" for the figures behind ``DEFAULT_POLICY``; a model entry may override it with its
own measured winner (``ModelSpec.default_policy``).
"""

from .config import Policy

DEFAULT_POLICY = Policy.resample
MARGIN = 1.10  # run-to-run noise of clean images per second on the benchmark


def choose_default(clean_per_s: dict[str, float]) -> Policy:
    """The policy with the most clean (verified and correct) images per second; a token policy must beat
    plain resampling by more than the noise to earn its place."""
    best = max(clean_per_s, key=clean_per_s.get)
    if Policy.resample in clean_per_s and clean_per_s[best] <= MARGIN * clean_per_s[Policy.resample]:
        return Policy.resample
    return Policy(best)
