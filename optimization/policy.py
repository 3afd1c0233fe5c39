"""The engine's policies and which one is the default (torch-free: the API reads it).

The default is decided by measurement, not belief: ``tally bench engine`` runs every policy on the same
jobs at the same wall-clock budget, and the one with the most verified, clean images per second wins.
See the README's "Which policy is the default" for the figures behind this choice.
"""

POLICIES = ("resample", "library", "refine")
DEFAULT_POLICY = "resample"
