"""Distribution drift math (pure numpy): PSI, the two-sample KS statistic, and binned reference profiles.

The one implementation shared by training (reference profiles), the server (live drift
gauges) and `recsys monitor` (offline reports).
"""
from drift.profile import Profile, QuantityProfile, compare_profiles, fit_profile
from drift.stats import ks_statistic, psi

__all__ = ["Profile", "QuantityProfile", "compare_profiles", "fit_profile", "ks_statistic", "psi"]
