"""What a run may know about the real return of its policies, and from where.

Two sources, kept apart:

- **the real episodes** (every run, on a robot too): the mean discounted return of a batch and
  its Student-t confidence interval (``ReturnEstimate``); episodes of the same policy are pooled
  (``BestPolicy``), so a policy deployed again has a tighter interval;
- **an evaluator** (sim-only runs only): a callable ``phi -> {'normalized_return', 'real_return'}``
  that reads the hidden real model.  ``oracle_evaluator(problem)`` is the in-process one; over
  ROS the robot_emulator serves it (``~/evaluate``) and the outer_optimizer's ``evaluator``
  parameter names that service.  Nothing in the loop decides anything on it: without an
  evaluator the records' ``normalized_return`` and ``real_return`` are NaN and the rest of the
  run is the same, bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

Evaluator = Callable[[np.ndarray], dict]
"""``evaluator(phi) -> {'normalized_return': float, 'real_return': float}`` (NaN where unknown)."""

NAN = float('nan')


def oracle_evaluator(problem) -> Evaluator:
    """The exact normalised and real return of a policy from the problem's hidden real model
    (sim-only evaluation: a real robot has no such model)."""
    def evaluate(phi: np.ndarray) -> dict:
        import torch
        return {'normalized_return': float(problem.normalized_return(phi)),
                'real_return': float(problem.real_objective(torch.as_tensor(phi, dtype=torch.float64)))}
    return evaluate


@dataclass(frozen=True)
class ReturnEstimate:
    """Mean of per-episode returns with a two-sided Student-t interval at ``confidence``
    (``low``/``high`` NaN below two episodes; ``mean`` NaN without episodes)."""
    mean: float
    low: float
    high: float
    episodes: int

    @classmethod
    def of(cls, returns, confidence: float) -> 'ReturnEstimate':
        values = np.asarray(returns, dtype=np.float64).reshape(-1)
        n = values.size
        if n == 0:
            return cls(NAN, NAN, NAN, 0)
        mean = float(np.mean(values))
        if n < 2:
            return cls(mean, NAN, NAN, n)
        from scipy.stats import t
        half = float(t.ppf(0.5 + confidence / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))
        return cls(mean, mean - half, mean + half, n)

    def significantly_below(self, other: 'ReturnEstimate') -> bool:
        """True when this interval lies entirely below ``other``'s (False when either is unknown):
        with both at 95 % the chance that a policy as good as ``other`` is called worse is
        below 2.5 %, which also covers the upward bias of a best-so-far picked among noisy
        estimates."""
        return bool(self.high < other.low)      # NaN compares False

    def to_json(self) -> dict:
        return {'real_return_estimate': self.mean, 'real_return_ci_low': self.low,
                'real_return_ci_high': self.high, 'episodes': self.episodes}


def bootstrap_interval(point: float, episodes: int, statistic: Callable[[np.ndarray], float], resamples: int,
                       confidence: float, seed: bytes) -> ReturnEstimate:
    """``point`` with the percentile bootstrap interval over whole episodes: ``statistic(chosen)``
    re-estimates it on the episodes ``chosen`` (indices drawn with replacement).  The resampling
    stream is seeded by ``seed`` (the data's bytes), so the interval is a function of the data and
    draws nothing from a run's RNG.  NaN bounds below two episodes."""
    if episodes < 2:
        return ReturnEstimate(point, NAN, NAN, episodes)
    import zlib
    rng = np.random.default_rng(zlib.crc32(seed))
    samples = [statistic(rng.integers(0, episodes, episodes)) for _ in range(resamples)]
    low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return ReturnEstimate(point, float(low), float(high), episodes)


@dataclass
class BestPolicy:
    """The best policy deployed so far (highest mean estimated real return): where it came from
    (theta, the optimiser state that produced theta) and all its real episodes' returns."""
    iteration: int
    """The outer iteration in which it was first deployed (its batch's record)."""
    theta: np.ndarray
    phi: np.ndarray
    inner_grad_norm: float
    returns: np.ndarray
    optimizer: dict = field(default_factory=dict)
    """name -> ndarray or number: the optimiser state when theta was reached (``MethodRun.optimizer_state``)."""

    def estimate(self, confidence: float) -> ReturnEstimate:
        return ReturnEstimate.of(self.returns, confidence)

    def to_json(self, confidence: float, evaluator: Optional[Evaluator] = None) -> dict:
        """The run's result: the best deployed policy's theta, its estimated real return with its
        interval, and (sim-only, with an evaluator) its exact normalised return."""
        out = {'iteration': int(self.iteration), 'theta': self.theta.tolist(), 'confidence': confidence,
               **self.estimate(confidence).to_json()}
        values = evaluator(self.phi) if evaluator is not None else {}
        out['normalized_return'] = float(values.get('normalized_return', NAN))
        out['real_return'] = float(values.get('real_return', NAN))
        return out
