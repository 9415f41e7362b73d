"""Meta-analysis in two steps: effect sizes ``(yi, vi)`` then random-effects pooling.

``lacrima.meta.effects`` is the escalc-like step, ``lacrima.meta.rma`` the rma-like one.
Nothing here knows about sites or the study plan.
"""

from lacrima.meta.effects import fisher_z, from_symmetric_ci, hedges_g, log_odds_ratio, z_critical
from lacrima.meta.rma import RandomEffectsResult, random_effects

__all__ = [
    "fisher_z", "hedges_g", "log_odds_ratio", "from_symmetric_ci", "z_critical",
    "RandomEffectsResult", "random_effects",
]
