"""Statistics of the mechanism test: pure functions, no I/O (scipy / statsmodels underneath).

``analyze(results, hypothesis)`` turns an AggregatedResults into a MechanismAnalysis; the
building blocks live in ``seed_level`` (paired t, Welch t, Cohen's d / d_z, mean difference and
CI), ``item_level`` (exact McNemar, hierarchical bootstrap), ``power`` (noncentral t),
``contrast`` (one A-vs-B comparison, Holm) and ``verdict`` (the decision rule).
"""

from gradience.stats.analyze import analyze, eval_items_hash
from gradience.stats.verdict import decide

__all__ = ["analyze", "decide", "eval_items_hash"]
