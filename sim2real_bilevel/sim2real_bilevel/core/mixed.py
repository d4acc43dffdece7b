"""Mixed mode: the offline outer loop on a recorded dataset first, then a small budget of online
real episodes with safe improvement (``solve CONFIG --real-data PATH.. --offline --online-episodes B``).

What a cautious user runs on a new robot: the dataset tunes the simulator with no new episode
(``core/offline.py``, pessimism and the coverage constraint included), then the policy it ends
with is the first one deployed, and Algorithm 1 goes on online from there -- same theta, phi and
optimiser state -- until B real episodes are spent:

  * the real critic / estimators of the online phase see the dataset's transitions as older
    batches before the new ones (``BilevelOuterLoop.real_data``; ``real_history`` counts them
    too), so the offline data is not thrown away: tabular -- the count model of dataset + new
    episodes; LQR -- LSTD-Q on every transition (both valid off-policy).  The on-policy parts
    (visitation, second moment) come from the newest batch, as online;
  * safe improvement is on (unless the caller turns it off explicitly): a deployed policy whose
    estimated real return falls significantly below the best deployed one is backtracked, and a
    candidate the real data (dataset included) predicts to be worse is refused before it runs;
  * the last online iteration collects only what is left of the budget, so the run never uses
    more than B real episodes.

The records count every real episode the run learnt from (dataset + online) in ``real_episodes``
and ``real_transitions``; ``phase_reports`` gives each phase on its own (the offline phase's final
estimate with its bootstrap interval and coverage; the online episodes used, backtracks and the
best deployed policy).  Nothing reads the hidden real model unless an evaluator is given
(``--evaluate``, sim-only)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .datasets import Dataset
from .evaluation import ReturnEstimate
from .offline import OfflineBilevelRun, OfflineSettings, final_report, offline_module
from .outer import BilevelOuterLoop, MethodRun, OuterConfig
from .problem import BilevelProblem, Trajectories

MIXED_METHODS = ('bilevel',)
"""Methods with a mixed mode (the baselines have no online continuation of an offline phase)."""


class MixedBilevelRun(OfflineBilevelRun):
    """``offline_iterations`` offline outer iterations on ``dataset``, then online ones until
    ``online_episodes`` real episodes are spent (module docstring)."""

    name = 'bilevel-mixed'

    def __init__(self, problem: BilevelProblem, config: OuterConfig, dataset: Dataset, online_episodes: int,
                 seed: int = 0, progress=None, evaluator=None, settings: Optional[OfflineSettings] = None):
        if isinstance(online_episodes, bool) or not isinstance(online_episodes, (int, np.integer)) \
                or online_episodes < 1:
            raise ValueError(f'online_episodes = {online_episodes!r}: expected an integer >= 1 (the budget of new '
                             'real episodes after the offline phase)')
        super().__init__(problem, config, dataset, seed, progress, evaluator, settings)
        self.online_budget = int(online_episodes)
        self.offline_iterations = int(config.iterations)
        self.config.iterations = self.offline_iterations + self.online_iterations_for(self.online_budget)
        self.offline_phase: Optional[dict] = None
        """The offline phase's result (``final_report`` when it ended); None until then."""

    def online_iterations_for(self, budget: int) -> int:
        """Online iterations that spend ``budget`` episodes (the last one takes what is left)."""
        return math.ceil(budget / self.config.real_episodes)

    @property
    def online_episodes(self) -> int:
        """New real episodes collected so far (the dataset's not counted)."""
        return self.real_episode_count - self.dataset.episodes

    @property
    def online(self) -> bool:
        return self.iteration >= self.offline_iterations

    # --- the loop ---------------------------------------------------------------------------------------------
    def iterate(self):
        if not self.online:
            return super().iterate()
        if self.offline_phase is None:
            self.end_offline_phase()
        if self.online_episodes >= self.online_budget:
            raise RuntimeError(f'mixed mode: the budget of {self.online_budget} online real episodes is spent '
                               f'(iteration {self.iteration}); nothing more to run')
        return BilevelOuterLoop.iterate(self)

    def end_offline_phase(self) -> None:
        self.offline_phase = final_report(self, min_coverage=self.min_coverage, refused_steps=self.refused_steps,
                                          halved_steps=self.halved_steps, iterations=self.offline_iterations)
        self.event = (f'online phase: from the offline policy (estimated real return '
                      f'{self.offline_phase["real_return_estimate"]:.4g} [{self.offline_phase["real_return_ci_low"]:.4g}, '
                      f'{self.offline_phase["real_return_ci_high"]:.4g}], coverage {self.offline_phase["coverage"]:.3g}), '
                      f'budget {self.online_budget} real episode(s)')

    def sample_real_batch(self, phi: np.ndarray) -> Trajectories:
        """``real_episodes`` real episodes, or what is left of the online budget."""
        episodes = min(self.config.real_episodes, self.online_budget - self.online_episodes)
        return self.problem.sample_real(phi, episodes, self.rng)

    def real_data(self) -> list[Trajectories]:
        """The dataset's batches as the oldest real data, then the new ones (``real_history`` of them all)."""
        return (list(self.dataset.batches) + self.real_batches)[-self.config.real_history:]

    def return_interval(self) -> ReturnEstimate:
        """Offline phase: the dataset's bootstrap interval at its first and last iteration; online: the
        Student-t interval over the iteration's real episodes."""
        if self.iteration > self.offline_iterations:
            return MethodRun.return_interval(self)
        if self.iteration in (0, self.offline_iterations):
            return self.estimator.interval(self.phi, self.config.confidence)
        return ReturnEstimate(math.nan, math.nan, math.nan, self.dataset.episodes)

    # --- reports and persistence ------------------------------------------------------------------------------
    def phase_reports(self) -> dict:
        """Each phase on its own: the offline phase's final policy as the dataset saw it, and the online
        phase's spending and best deployed policy (None while a phase has not run)."""
        offline = self.offline_phase
        if offline is None and self.iteration >= self.offline_iterations:
            offline = final_report(self, min_coverage=self.min_coverage, refused_steps=self.refused_steps,
                                   halved_steps=self.halved_steps, iterations=self.offline_iterations)
        online = None
        if self.iteration > self.offline_iterations:
            online_records = self.history[self.offline_iterations + 1:]
            online = {'budget': self.online_budget, 'episodes': int(self.online_episodes),
                      'iterations': self.iteration - self.offline_iterations,
                      'backtracks': int(self.backtracks),
                      'refused_before_deployment': sum(r.event.startswith('refused before deployment')
                                                       for r in online_records),
                      'safe_improvement': bool(self.config.safe_improvement),
                      'best': None if self.best is None else self.best.to_json(self.config.confidence, self.evaluator),
                      'final_normalized_return': float(self.history[-1].normalized_return)}
        return {'offline': offline, 'online': online}

    def final_report(self) -> dict:
        """The offline phase's report while the run is still offline (a zero budget never gets here)."""
        return self.phase_reports()['offline'] or super().final_report()

    def state_dict(self) -> dict:
        state = super().state_dict()
        state['meta']['mixed'] = {'online_budget': self.online_budget, 'offline_iterations': self.offline_iterations,
                                  'offline_phase': self.offline_phase}
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = state['meta'].get('mixed')
        if saved is None or saved['online_budget'] != self.online_budget \
                or saved['offline_iterations'] != self.offline_iterations:
            raise ValueError(f'the checkpoint is of a run with {None if saved is None else saved["offline_iterations"]} '
                             f'offline iterations and an online budget of '
                             f'{None if saved is None else saved["online_budget"]} episodes; this one has '
                             f'{self.offline_iterations} and {self.online_budget}')
        super().load_state_dict(state)
        self.offline_phase = saved['offline_phase']


def make_mixed_run(problem, method: str, dataset: Dataset, seed: int, online_episodes: int,
                   iterations: Optional[int] = None, overrides: Optional[dict] = None, progress=None,
                   evaluate: bool = False, settings: Optional[OfflineSettings] = None) -> MixedBilevelRun:
    """A mixed run (``iterations``: the offline phase's; safe improvement on unless ``overrides``
    turns it off)."""
    from .evaluation import oracle_evaluator
    from .experiments import make_config
    if method not in MIXED_METHODS:
        raise ValueError(f'--online-episodes: method {method!r} has no mixed mode; mixed methods are '
                         f'{list(MIXED_METHODS)}')
    offline_module(problem)                      # the kind's refusal first
    config = make_config(problem, method, iterations, {'safe_improvement': True, **(overrides or {})}, {})
    evaluator = oracle_evaluator(problem) if evaluate else None
    return MixedBilevelRun(problem, config, dataset, online_episodes, seed=seed, progress=progress,
                           evaluator=evaluator, settings=settings)
