"""The offline outer loop: tune the simulator from a fixed dataset of real episodes, with no new one.

``solve CONFIG --real-data PATH [PATH ...] --offline`` runs ``OfflineBilevelRun``: Algorithm 1
with steps 1-2 replaced by estimates from the dataset (``core/datasets.py``):

  1. the real policy gradient g = grad_phi J_real(phi) of the CURRENT policy, off-policy from the
     dataset (the kind's ``OfflineEstimator.gradient``: tabular -- the count model of the data
     (nominal simulator as a prior worth ``real_gradient.prior_transitions`` transitions per pair), and the
     exact policy gradient of the model's return; LQR -- LSTD-Q of the current gain on every
     transition (valid off-policy) and the discounted second moment of a least-squares linear
     model of the data);
  2. dJ_real/dtheta = (d phi*/d theta)^T g, the theta step, the inner solve -- as online;
  3. pessimism, a constraint on the data's support: a candidate policy phi*(theta_new) whose
     ``coverage`` by the dataset is below ``min_coverage`` (and below the current policy's) is not
     taken; the step is halved up to ``max_halvings`` times, then refused (the record's event says
     so).  Coverage is in [0, 1] (1: the data cover the policy; defined per kind, see
     ``OfflineEstimator.coverage``).  Kinds whose estimate re-simulates the data (robot) also bound
     the policy's step-to-step action change, as a multiple of the data's (``max_action_change``,
     ``OfflineEstimator.action_change_ratio``): the same halving, then refusal; and the report warns
     when the final policy is beyond it (the data do not show the robot's response to it).

Each record's ``real_return_estimate`` is the dataset's estimate of the current policy's real
return (the infinite-horizon discounted return from the data's initial states: what the
evaluator's ``real_return`` is); at iteration 0 and at the last iteration it has a bootstrap
confidence interval (whole episodes resampled; the resampling stream is seeded by the data, so it
draws nothing from the run's RNG).  The run's result (``final_report``) is the policy it ends with:
its estimated real return with that interval, its coverage, and -- only with ``--evaluate`` (the
evaluator reads the hidden real model, sim-only) -- its normalised return.  Nothing in the loop
reads the real model.

Kinds: a kind offers offline learning through ``OFFLINE_KINDS`` (its ``offline`` module:
``OfflineEstimator``, ``prepare_dataset`` and ``behaviour_sampler``): tabular (count model), LQR
(LSTD-Q), robot and urdf (a residual model: the simulator at the data's sysid fit, the recorded residuals
replayed; recorded episodes that end before the horizon at a terminal state of the task are padded, truncated
ones dropped with a warning: ``datasets.fit_to_horizon``).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .baselines import NominalRun
from .datasets import Dataset, DatasetError
from .evaluation import NAN, Evaluator, ReturnEstimate
from .outer import BilevelOuterLoop, IterationRecord, MethodRun, OuterConfig
from .problem import BilevelProblem

# kind -> module holding its offline estimator (see the module docstring)
OFFLINE_KINDS = {
    'tabular': '.problems.tabular.offline',
    'lqr': '.problems.lqr.offline',
    'robot': '.problems.robot.offline',
    'urdf': '.problems.robot.offline',          # a UrdfProblem is a RobotProblem: the same residual model
}
NOT_OFFLINE: dict[str, str] = {}


def offline_module(problem: BilevelProblem):
    """The kind's offline module, or a ValueError saying why the kind has none."""
    if problem.kind not in OFFLINE_KINDS:
        reason = NOT_OFFLINE.get(problem.kind, f'no offline estimator is registered for kind {problem.kind!r}')
        raise ValueError(f'--offline: {problem.source} ({problem.kind}): {reason}')
    return importlib.import_module(OFFLINE_KINDS[problem.kind], __package__)


@dataclass
class OfflineSettings:
    """Settings of the offline outer loop (``solve --offline``)."""
    min_coverage: Optional[float] = None
    """Pessimism: a step may not move the policy to a coverage below this (None: the kind's
    ``DEFAULT_MIN_COVERAGE``; 0 turns the constraint off)."""
    max_action_change: Optional[float] = None
    """Pessimism, for kinds with ``action_change_ratio`` (robot): a step may not move the policy to
    step-to-step action changes above this multiple of the recorded data's (rms; None: the kind's
    ``DEFAULT_MAX_ACTION_CHANGE``; 0 turns the check and its warning off)."""
    max_halvings: int = 4
    """Halvings of a step whose policy breaks the coverage constraint before it is refused."""
    resamples: int = 100
    """Bootstrap resamples of the confidence interval of the estimated real return."""
    pessimism: bool = True
    """Kinds with a pessimistic model (tabular: pairs the data lack lead to the worst reward
    forever) take the gradient of the pessimistic return; False: of the plain estimate."""

    def validate(self) -> None:
        if self.min_coverage is not None and not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError(f'min_coverage = {self.min_coverage!r}: expected a number in [0, 1]')
        if self.max_action_change is not None and not self.max_action_change >= 0.0:
            raise ValueError(f'max_action_change = {self.max_action_change!r}: expected a number >= 0 (0: off)')
        if self.max_halvings < 0:
            raise ValueError(f'max_halvings = {self.max_halvings!r}: expected an integer >= 0')
        if self.resamples < 2:
            raise ValueError(f'resamples = {self.resamples!r}: expected an integer >= 2')


def make_estimator(problem: BilevelProblem, dataset: Dataset, settings: OfflineSettings):
    """The kind's off-policy estimator on ``dataset`` (checked and converted for the problem)."""
    module = offline_module(problem)
    return module.OfflineEstimator(problem, module.prepare_dataset(problem, dataset), resamples=settings.resamples,
                                   pessimism=settings.pessimism)


class OfflineBilevelRun(BilevelOuterLoop):
    """Bi-level outer loop on a fixed dataset (module docstring)."""

    name = 'bilevel-offline'

    def __init__(self, problem: BilevelProblem, config: OuterConfig, dataset: Dataset, seed: int = 0,
                 progress: Optional[Callable[[IterationRecord], None]] = None,
                 evaluator: Optional[Evaluator] = None, settings: Optional[OfflineSettings] = None):
        super().__init__(problem, config, seed, progress, evaluator)
        self.settings = settings or OfflineSettings()
        self.settings.validate()
        self.estimator = make_estimator(problem, dataset, self.settings)
        self.dataset = self.estimator.dataset
        self.min_coverage = (self.estimator.DEFAULT_MIN_COVERAGE if self.settings.min_coverage is None
                             else float(self.settings.min_coverage))
        self.max_action_change = max_action_change(self.estimator, self.settings)
        # the data used, in the real-data accounting (no episode is added by the run)
        self.real_transitions = self.dataset.transitions
        self.real_episode_count = self.dataset.episodes
        self.coverage = NAN
        self.refused_steps = 0
        self.halved_steps = 0
        self.action_change_held = 0     # steps halved or refused because of max_action_change (``diagnose``)
        self.start_objective = NAN      # what the gradient climbs, at the start policy (``diagnose``)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state['meta']['offline'] = {'refused_steps': int(self.refused_steps), 'halved_steps': int(self.halved_steps),
                                    'action_change_held': int(self.action_change_held),
                                    'transitions': self.dataset.transitions,
                                    'start_objective': float(self.start_objective)}
        return state

    def load_state_dict(self, state: dict) -> None:
        saved = state['meta'].get('offline')
        if saved is None or saved['transitions'] != self.dataset.transitions:
            raise ValueError(f'the checkpoint is of a run on {None if saved is None else saved["transitions"]} '
                             f'recorded transitions; the dataset given has {self.dataset.transitions}')
        super().load_state_dict(state)
        self.refused_steps, self.halved_steps = int(saved['refused_steps']), int(saved['halved_steps'])
        self.action_change_held = int(saved.get('action_change_held', 0))
        self.start_objective = float(saved.get('start_objective', NAN))
        if self.phi is not None:
            self.coverage = self.estimator.coverage(self.phi)

    # --- the loop ---------------------------------------------------------------------------------------------
    def start(self) -> IterationRecord:
        t0 = time.perf_counter()
        self.set_policy(self.solve_inner(self.theta, None))
        self.coverage = self.estimator.coverage(self.phi)
        self.start_objective = objective_of(self.estimator)(self.phi)
        self.elapsed += time.perf_counter() - t0
        return self.record(grad_norm=NAN, estimate=self.estimator.value(self.phi),
                           timing={'inner_s': time.perf_counter() - t0})

    def iterate(self) -> tuple[float, float, dict]:
        timing = {}
        t0 = time.perf_counter()
        real_gradient = self.estimator.gradient(self.phi)
        gradient = np.where(self.learn_mask, self.outer_gradient(self.phi, self.theta, real_gradient), 0.0)
        timing['sensitivity_s'] = time.perf_counter() - t0
        if not np.all(np.isfinite(gradient)):
            raise FloatingPointError(f'outer gradient is not finite at iteration {self.iteration + 1}: {gradient}')
        direction = self.step_direction(gradient)
        t1 = time.perf_counter()
        floor = min(self.min_coverage, self.coverage)   # a policy already off the data may not go further off
        # a policy already changing its actions faster than allowed may not go further
        ceiling = max(self.max_action_change, action_change_of(self.estimator, self.phi)) if self.max_action_change \
            else np.inf
        held = False
        for halving in range(self.settings.max_halvings + 1):
            candidate = np.clip(self.theta + direction * 0.5 ** halving, self.lower, self.upper)
            result = self.solve_inner(candidate, self.phi)
            coverage = self.estimator.coverage(result.phi)
            change = action_change_of(self.estimator, result.phi) if np.isfinite(ceiling) else 0.0
            held = held or (coverage >= floor and change > ceiling)
            if coverage >= floor and change <= ceiling:
                self.theta = candidate
                self.set_policy(result)
                self.coverage = coverage
                if halving:
                    self.halved_steps += 1
                    self.event = (f'step halved {halving} time(s): coverage {coverage:.3g} >= {floor:.3g}'
                                  + (f', action change {change:.3g} <= {ceiling:.3g}' if np.isfinite(ceiling) else ''))
                break
        else:
            self.refused_steps += 1
            if coverage < floor:
                self.event = (f'step refused: the policy it leads to has coverage {coverage:.3g} < {floor:.3g} '
                              f'(min_coverage {self.min_coverage:g}) even at 1/{2 ** self.settings.max_halvings} '
                              'of the step')
            else:
                self.event = (f'step refused: the policy it leads to changes its action between steps {change:.3g} '
                              f'times as much as the data (rms) > {ceiling:.3g} (max_action_change '
                              f'{self.max_action_change:g}) even at 1/{2 ** self.settings.max_halvings} of the step')
        self.action_change_held += held
        timing['inner_s'] = time.perf_counter() - t1
        return float(np.linalg.norm(gradient)), self.estimator.value(self.phi), timing

    def step_direction(self, gradient: np.ndarray) -> np.ndarray:
        """The optimiser's theta step for ``gradient``, as online (``apply_step``, inside the bounds:
        every fraction of it stays inside them too)."""
        return self.apply_step(gradient) - self.theta

    def return_interval(self) -> ReturnEstimate:
        """The bootstrap interval at the first and the last iteration (NaN in between: cost)."""
        if self.iteration in (0, self.config.iterations):
            return self.estimator.interval(self.phi, self.config.confidence)
        return ReturnEstimate(NAN, NAN, NAN, self.dataset.episodes)

    def final_report(self) -> dict:
        return final_report(self, min_coverage=self.min_coverage, refused_steps=self.refused_steps,
                            halved_steps=self.halved_steps)


class OfflineSysIdRun(MethodRun):
    """System identification on the same dataset: maximum likelihood of the learnable dynamics
    entries on every recorded transition, then one inner solve (no real episode is collected)."""

    name = 'sysid-offline'

    def __init__(self, problem, config, dataset: Dataset, seed: int = 0, progress=None, evaluator=None,
                 settings: Optional[OfflineSettings] = None):
        super().__init__(problem, config, seed, progress, evaluator)
        self.estimator = make_estimator(problem, dataset, settings or OfflineSettings())
        self.dataset = self.estimator.dataset
        self.real_transitions = self.dataset.transitions
        self.real_episode_count = self.dataset.episodes

    def start(self) -> IterationRecord:
        t0 = time.perf_counter()
        self.theta = np.clip(self.problem.system_identification(self.dataset.batches, self.problem.theta0()),
                             self.lower, self.upper)
        self.set_policy(self.solve_inner(self.theta, None))
        return self.record(grad_norm=NAN, estimate=self.estimator.value(self.phi),
                           timing={'sysid_s': time.perf_counter() - t0})

    def return_interval(self) -> ReturnEstimate:
        return self.estimator.interval(self.phi, self.config.confidence)

    def iterate(self):
        return NAN, self.estimator.value(self.phi), {}

    def final_report(self) -> dict:
        return final_report(self)


def max_action_change(estimator, settings: OfflineSettings) -> float:
    """The bound on the action-change ratio (0: off, also for kinds without ``action_change_ratio``)."""
    if not hasattr(estimator, 'action_change_ratio'):
        return 0.0
    default = getattr(estimator, 'DEFAULT_MAX_ACTION_CHANGE', 0.0)
    return float(default if settings.max_action_change is None else settings.max_action_change)


def action_change_of(estimator, phi: np.ndarray) -> float:
    """The policy's action-change ratio (``OfflineEstimator.action_change_ratio``), NaN for kinds without one."""
    ratio = getattr(estimator, 'action_change_ratio', None)
    return float(ratio(phi)) if ratio is not None else NAN


def objective_of(estimator) -> Callable[[np.ndarray], float]:
    """What the kind's offline gradient climbs: its ``objective`` (e.g. the pessimistic return), else its ``value``."""
    return getattr(estimator, 'objective', estimator.value)


ADVICE = ('collect data with a more exploratory behaviour policy (`dataset --behaviour noisy`, or real runs with a '
          'larger action noise) or more episodes, or continue online (--online-episodes)')


def diagnose(run) -> str:
    """Words saying that an offline bi-level run ended without an improvement the data support, or ''.

    Reasons, each measured on the run's own estimator (never the real model):
    - the coverage constraint refused the last step (the run ended held at the data's support);
    - the kind sees a better policy only off the data (``estimator.unsupported_improvement``: tabular --
      the count model's optimal policy, better by more than a share of the return range, through pairs
      tried fewer than ``MIN_PAIR_COUNT`` times: the pessimistic estimate's plateau);
    - the estimated return (what the gradient climbs) did not rise from the start policy's;
    - the final policy changes its action between steps more than ``max_action_change`` times as much as
      the data, or that bound halved or refused a step (kinds with ``action_change_ratio``): the data do
      not show the robot's response to such changes, so the estimate may be far off (measured:
      bench/results/mixed_pendulum/warning_rule/; a refused step's words come from here, not from the
      coverage reason)."""
    if run.iteration < 1 or not np.isfinite(run.start_objective):
        return ''
    reasons = []
    last = run.history[-1].event if run.history else ''
    if last.startswith('step refused') and 'has coverage' in last:
        reasons.append(f'the coverage constraint refused {run.refused_steps} of {run.iteration} steps, the last one '
                       f'included (the policies the gradient points to have coverage < {run.min_coverage:g})')
    unsupported = getattr(run.estimator, 'unsupported_improvement', None)
    found = unsupported(run.phi, run.min_coverage) if unsupported is not None else None
    if found:
        reasons.append(found)
    final = objective_of(run.estimator)(run.phi)
    risen = final - run.start_objective > 1e-9 * (1.0 + abs(run.start_objective))
    if not risen:
        reasons.append(f'the estimated return did not rise from the start policy\'s ({run.start_objective:.4g} -> '
                       f'{final:.4g})')
    bound = getattr(run, 'max_action_change', 0.0)
    change = action_change_of(run.estimator, run.phi) if bound else NAN
    held = getattr(run, 'action_change_held', 0)
    unsupported_estimate = bool(bound) and (change > bound or held > 0)
    if unsupported_estimate:
        interval = run.estimator.interval(run.phi, run.config.confidence)
        what = (f'the final policy changes its action between steps {change:.3g} times as much as the data (rms; '
                f'max_action_change {bound:g})' if change > bound else
                f'the action-change bound held {held} of {run.iteration} steps (halved or refused: the gradient '
                f'points to policies that change their action between steps more than {bound:g} times as much as '
                f'the data, rms; the final policy {change:.3g})')
        reasons.insert(0, f'{what}: the data do not show the robot\'s response to such command changes (an actuation '
                          f'delay or actuator dynamics the simulator lacks), so the estimated return {interval.mean:.4g} '
                          f'[{interval.low:.4g}, {interval.high:.4g}] may be far too high')
    if not reasons:
        return ''
    prefix = ('the estimate is not supported by the data: ' if unsupported_estimate else
              'no further supported improvement: ' if risen else 'no supported improvement: ')
    return prefix + '; '.join(reasons) + '; ' + ADVICE


def final_report(run, **extra) -> dict:
    """An offline run's result: the policy it ends with, as the dataset sees it -- estimated real
    return with its bootstrap interval, coverage, and ``warning`` (``diagnose``: words when it ended
    without an improvement the data support, else '') -- and its exact normalised return only when
    the run has an evaluator (sim-only)."""
    estimate = run.estimator.interval(run.phi, run.config.confidence)
    report = {'offline': True, 'iteration': int(run.iteration), 'theta': run.theta.tolist(),
              'confidence': run.config.confidence, **estimate.to_json(),
              'coverage': float(run.estimator.coverage(run.phi)), 'dataset': run.dataset.describe(),
              'action_change': action_change_of(run.estimator, run.phi),
              'pessimistic_estimate': float(getattr(run.estimator, 'pessimistic_value', run.estimator.value)(run.phi)),
              'transitions': run.dataset.transitions,
              'warning': diagnose(run) if hasattr(run, 'start_objective') else '', **extra}
    values = run.evaluator(run.phi) if run.evaluator is not None else {}
    report['normalized_return'] = float(values.get('normalized_return', NAN))
    report['real_return'] = float(values.get('real_return', NAN))
    return report


# method name -> (run class, config overrides) for ``solve --offline``
OFFLINE_METHODS = {
    'bilevel': (OfflineBilevelRun, {}),
    'sysid': (OfflineSysIdRun, {'iterations': 0}),
    'nominal': (NominalRun, {'iterations': 0}),
}


def make_offline_run(problem, method: str, dataset: Dataset, seed: int, iterations: Optional[int] = None,
                     overrides: Optional[dict] = None, progress=None, evaluate: bool = False,
                     settings: Optional[OfflineSettings] = None):
    """An offline run of ``method`` on ``dataset`` (config resolved as ``experiments.make_run`` does)."""
    from .experiments import make_config
    from .evaluation import oracle_evaluator
    if method not in OFFLINE_METHODS:
        raise ValueError(f'--offline: method {method!r} needs new real episodes; offline methods are '
                         f'{sorted(OFFLINE_METHODS)}')
    offline_module(problem)                      # the kind's refusal first
    cls, method_overrides = OFFLINE_METHODS[method]
    config = make_config(problem, method, iterations, overrides, method_overrides)
    evaluator = oracle_evaluator(problem) if evaluate else None
    if cls is NominalRun:
        return cls(problem, config, seed=seed, progress=progress, evaluator=evaluator)
    return cls(problem, config, dataset, seed=seed, progress=progress, evaluator=evaluator, settings=settings)


def run_offline_experiment(config_path, methods: list[str], dataset: Dataset, seeds: int = 1,
                           iterations: Optional[int] = None, overrides: Optional[dict] = None, on_record=None,
                           run_dir=None, evaluate: bool = False, settings: Optional[OfflineSettings] = None,
                           online_episodes: Optional[int] = None) -> dict:
    """``experiments.run_experiment`` with every run offline on ``dataset`` (``make_offline_run``);
    the document records the dataset it learnt from.  ``online_episodes``: mixed mode (``core/mixed.py``),
    the offline phase then at most that many new real episodes."""
    from functools import partial
    from .experiments import run_experiment
    from .mixed import MIXED_METHODS
    from .problems import load_problem
    allowed, words = ((MIXED_METHODS, '--online-episodes: method(s) {} have no mixed mode; mixed methods are {}')
                      if online_episodes is not None else
                      (sorted(OFFLINE_METHODS), '--offline: method(s) {} need new real episodes; offline methods are {}'))
    unknown = [m for m in methods if m not in allowed]
    if unknown:
        raise ValueError(words.format(unknown, list(allowed)))
    # refusals before any run; the summary is of the data as the problem takes it (padded / dropped episodes)
    prepared = make_estimator(load_problem(config_path), dataset, settings or OfflineSettings()).dataset
    document = run_experiment(config_path, methods, seeds=seeds, iterations=iterations, overrides=overrides,
                              on_record=on_record, run_dir=run_dir, evaluate=evaluate,
                              make=partial(_make_for_experiment, dataset=dataset, settings=settings,
                                           online_episodes=online_episodes))
    document['offline'] = {'dataset': prepared.describe(), 'sources': dataset.sources, 'notes': prepared.notes,
                           'behaviour_known': dataset.behaviour_known, 'online_episodes': online_episodes}
    return document


def _make_for_experiment(problem, method, seed, iterations, overrides, progress=None, evaluate=False, *,
                         dataset, settings, online_episodes=None):
    if online_episodes is not None:
        from .mixed import make_mixed_run
        return make_mixed_run(problem, method, dataset, seed, online_episodes, iterations, overrides,
                              progress=progress, evaluate=evaluate, settings=settings)
    return make_offline_run(problem, method, dataset, seed, iterations, overrides, progress=progress,
                            evaluate=evaluate, settings=settings)


def generate_dataset(problem: BilevelProblem, episodes: int, rng: np.random.Generator, behaviour: str = 'nominal',
                     noise: float = 2.0) -> tuple[Dataset, np.ndarray]:
    """``episodes`` real episodes of a behaviour policy on the problem's real system (sim-only:
    generated and shipped problems), and the behaviour policy's parameters.

    behaviour 'nominal': the inner optimum at the nominal theta (what an online run deploys
    first); 'noisy': the same policy made noisier by ``noise`` (> 1; the kind's
    ``behaviour_sampler``: tabular -- temperature x noise, LQR -- action std x noise)."""
    if episodes < 1:
        raise DatasetError(f'episodes = {episodes!r}: expected an integer >= 1')
    if behaviour not in ('nominal', 'noisy'):
        raise DatasetError(f"behaviour {behaviour!r}: expected 'nominal' or 'noisy'")
    if behaviour == 'noisy' and not noise > 1.0:
        raise DatasetError(f'noise = {noise!r}: expected a number > 1 for a noisier behaviour policy')
    module = offline_module(problem)
    phi = problem.inner_solve(problem.theta0(), None, method='exact').phi
    sampler, behaviour_phi, words = module.behaviour_sampler(problem, phi, noise if behaviour == 'noisy' else 1.0)
    batch = sampler.sample_real(behaviour_phi, episodes, rng)
    return Dataset(batches=[batch], behaviour_known=True, sources=[f'generated from {problem.source}'],
                   behaviour=words), behaviour_phi
