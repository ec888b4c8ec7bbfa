"""The synthetic matrix problems that the completion benchmark and the matrix experiments
share: the paper's step and how seeds are split between the target, the sample and each
solver's init."""

from __future__ import annotations

#: The paper's step, eta = 5e-3 m n on its mean-over-all-entries loss, on our plain-sum loss
#: (docs/METHOD.md 1).
PAPER_LR = 5e-3
# Seeds: the target, the sampled entries and each solver's init draw from unrelated streams.
# (With one seed for all, ALS's Gaussian start equals the target's X up to scale at seed 0.)
SAMPLE_OFFSET = 1_000
SOLVER_OFFSET = 2_000
