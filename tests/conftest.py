"""Shared test settings: Hypothesis profiles.

``default`` keeps the suite fast; ``campaign`` (``--hypothesis-profile=campaign``)
runs thousands of examples per property for deep random campaigns.
"""

from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, max_examples=50,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("campaign", deadline=None, max_examples=5000,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.load_profile("default")
