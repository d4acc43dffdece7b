"""The inner solvers' guard against non-finite values (issue 12).

A simulator whose integrator diverges (an 80 ms semi-implicit Euler step on a fast swing: |qd|
of 1e3 rad/s, then NaN states) gives a non-finite J_sim or gradient; one optimiser step on it
makes every parameter NaN, and that policy would be handed to the robot.

Policy chosen: KEEP THE LAST FINITE ITERATE and report it, rather than stop with an error.
- The iterate before the event had a finite loss and gradient on the same random numbers: it
  is a policy the solver had accepted, not a guess.
- L-BFGS's line search tries long steps; a trial that diverges is a rejected step, not the
  end of the solve: L-BFGS restarts from its best finite evaluation with a fresh memory (at
  most ``LBFGS_RESTARTS`` times, within its iteration budget).  Adam (the exact solver's
  warm-up, 'sampled') goes on from the last finite iterate with fresh moments and half the
  step size, at most ``ADAM_RESTARTS`` times (measured on swingup.yaml: domain randomisation's
  Adam warm-up met a diverging simulator at step 15; stopping there left an untrained policy).
  PPO stops.
- An outer loop deploys each inner solution on the robot; one theta at which the integrator
  diverges for a fast policy must not end a run whose real episodes are already spent.
- The event is not silent: ``InnerResult.info['non_finite']`` holds the solver, the iteration,
  the value, the largest |state| of the simulated rollout at the bad iterate and the likely
  cause, and the same text is logged as a warning.
- With no finite iterate at all (the starting policy's loss or gradient is already non-finite)
  there is nothing to keep: ``NonFiniteInnerSolve`` is raised with that report.
The outer loop refuses to deploy a non-finite policy whatever produced it
(``core.problem.require_finite_policy``).
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch

LOGGER = logging.getLogger(__name__)
LBFGS_RESTARTS = 3
ADAM_RESTARTS = 3


class NonFiniteInnerSolve(FloatingPointError):
    """An inner solve met a non-finite loss, gradient or parameter before any finite iterate."""


class FiniteGuard:
    """Remembers the last iterate of ``phi`` whose loss, gradient and value were all finite.

    ``accept(iteration, loss)`` after ``loss.backward()`` and before the optimiser's step: True
    when everything is finite (the iterate is kept, see ``keep_lowest``); otherwise ``phi`` is put
    back to the kept iterate, the event is recorded (``report``) and False is returned (the solver
    stops, or goes on from there: see the module), or, with nothing kept, ``NonFiniteInnerSolve``.
    ``problem`` and ``theta_full`` / ``noise`` only serve the report (a rollout at the bad
    iterate for the largest |state|)."""

    def __init__(self, problem, phi: torch.Tensor, theta_full: torch.Tensor, noise, solver: str):
        self.problem, self.phi, self.theta_full, self.noise, self.solver = problem, phi, theta_full, noise, solver
        self.kept: Optional[torch.Tensor] = None
        self.kept_loss = math.inf
        self.keep_lowest = False
        """False: keep the last finite iterate (Adam's accepted steps); True: the finite evaluation with
        the lowest loss (L-BFGS, whose evaluations include line-search trials)."""
        self.report: Optional[dict] = None
        """The last event (with ``events``, how many there were); None while there was none."""
        self.events = 0
        self.then = ''
        """What the solver does after an event, for the message (default: it stops)."""

    def accept(self, iteration: int, loss: torch.Tensor) -> bool:
        phi = self.phi
        grad = phi.grad
        finite_loss = bool(torch.isfinite(loss).all())
        finite_grad = grad is not None and bool(torch.isfinite(grad).all())
        finite_phi = bool(torch.isfinite(phi).all())
        if finite_loss and finite_grad and finite_phi:
            value = float(loss.detach())
            if not self.keep_lowest or self.kept is None or value < self.kept_loss:
                self.kept, self.kept_loss = phi.detach().clone(), value
            return True
        what = ('parameter' if not finite_phi else 'loss' if not finite_loss else 'gradient')
        value = (float('nan') if not finite_phi else float(loss.detach()) if not finite_loss
                 else float(grad.abs().max()) if grad is not None else float('nan'))
        self._back_to_kept(iteration, what, value)
        phi.grad = None
        return False

    def accept_rollout(self, iteration: int, *values: torch.Tensor) -> bool:
        """For solvers that sample without a gradient (PPO): True when every tensor of the rollout
        is finite; otherwise as ``accept`` with a non-finite loss."""
        if all(bool(torch.isfinite(v).all()) for v in values):
            return True
        self._back_to_kept(iteration, 'simulated rollout', float('nan'))
        return False

    def finish(self, iteration: int) -> None:
        """After the solver's last step: a non-finite ``phi`` (the step itself overflowed) goes
        back to the kept iterate."""
        if not bool(torch.isfinite(self.phi).all()):
            self._back_to_kept(iteration, 'parameter', float('nan'))

    def raise_if_nothing_kept(self) -> None:
        if self.report is not None and self.kept is None:
            raise NonFiniteInnerSolve(self.report['message'])

    def _back_to_kept(self, iteration: int, what: str, value: float) -> None:
        """Record the event, then put ``phi`` back to the kept iterate (NonFiniteInnerSolve when
        there is none)."""
        self._record(iteration, what, value)
        self.raise_if_nothing_kept()
        with torch.no_grad():
            self.phi.copy_(self.kept)

    def _record(self, iteration: int, what: str, value: float) -> None:
        largest, first_bad_step = (math.nan, None) if what == 'parameter' else self._rollout_extent()
        if what == 'parameter':
            cause = "the optimiser's step made a policy parameter non-finite: lower inner.learning_rate"
        elif first_bad_step is not None or largest > 1e3:
            cause = (f'the simulator diverged (largest finite |state| {largest:.3g}'
                     + (f', non-finite state from control step {first_bad_step}' if first_bad_step is not None else '')
                     + f'): reduce control_period (now {self.problem.control_period:g} s)'
                     + self._substeps_hint())
        else:
            cause = (f'the rollout stayed finite (largest |state| {largest:.3g}): the policy parameters or '
                     'their step overflowed; lower inner.learning_rate')
        kept = ((f'kept the {"best finite evaluation" if self.keep_lowest else "last finite iterate"}' + self.then)
                if self.kept is not None else 'no finite iterate to keep: the starting policy is already non-finite')
        self.events += 1
        message = (f'{self.problem.source}: inner solve ({self.solver}) met a non-finite {what} ({value!r}) at '
                   f'iteration {iteration}; {kept}. Likely cause: {cause}')
        self.report = {'solver': self.solver, 'iteration': int(iteration), 'what': what, 'value': value,
                       'largest_abs_state': largest, 'first_non_finite_step': first_bad_step,
                       'kept_last_finite': self.kept is not None, 'events': self.events, 'message': message}
        LOGGER.warning(message)

    def _substeps_hint(self) -> str:
        substeps = getattr(getattr(self.problem, 'settings', None), 'physics_substeps', None)
        return '' if substeps is None else f' or raise simulator.physics_substeps (now {substeps})'

    def _rollout_extent(self) -> tuple[float, Optional[int]]:
        """Largest finite |state| of the rollout at the current (bad) iterate, and the first
        control step with a non-finite state (None: all finite)."""
        try:
            with torch.no_grad():
                states = self.problem.rollout(self.phi.detach(), self.theta_full, self.noise)[0]
        except Exception:          # noqa: BLE001 -- the report must not hide the event itself
            return math.nan, None
        finite = torch.isfinite(states)
        largest = float(states[finite].abs().max()) if bool(finite.any()) else math.nan
        bad_steps = torch.nonzero(~finite.reshape(states.shape[0], -1).all(-1)).flatten()
        return largest, (int(bad_steps[0]) if bad_steps.numel() else None)
