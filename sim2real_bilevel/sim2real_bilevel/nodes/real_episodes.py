"""The optimizer's run_episodes requests: built, saved, signed, read -- and recovered after a restart.

Every run_episodes goal carries a ``request_id`` (the same for its re-sends), saved in
RUN_DIR/real/pending.json before it is sent; the bridge keeps the results of succeeded
requests.  A restarted optimizer whose last request has no stored batch asks the bridge for that
request's kept result (``kept_result_only``) before anything else, so episodes the robot ran
while the optimizer was dead are used, not run again.  With a policy key every goal is signed
(again at every send: the bridge refuses old signatures).
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Callable, Optional

from sim2real_bilevel_interfaces.action import RunEpisodes
from sim2real_bilevel_interfaces.msg import PolicyParameters
from sim2real_bilevel_interfaces.srv import RunEpisodeBatch

from ..core import checkpoint
from . import conversions, provenance
from .action_calls import PeerLost


def policy_fields(policy: PolicyParameters) -> dict:
    """A policy message as JSON-able fields (floats round-trip exactly through JSON)."""
    return {'kind': policy.kind, 'shape': [int(s) for s in policy.shape], 'values': [float(v) for v in policy.values],
            'version': int(policy.version), 'theta_version': int(policy.theta_version),
            'inner_grad_norm': float(policy.inner_grad_norm)}


def policy_message(fields: dict) -> PolicyParameters:
    return PolicyParameters(kind=str(fields['kind']), shape=[int(s) for s in fields['shape']],
                            values=[float(v) for v in fields['values']], version=int(fields['version']),
                            theta_version=int(fields['theta_version']),
                            inner_grad_norm=float(fields['inner_grad_norm']))


def batch_request(goal: RunEpisodes.Goal):
    """The run_episode_batch request of a run_episodes goal: the same fields (the signature, over
    those fields, stays valid)."""
    return RunEpisodeBatch.Request(**{name: getattr(goal, name) for name in goal.get_fields_and_field_types()})


class RealEpisodeRequests:
    """run_episodes goals of one run (``run_dir``) on ``problem``, signed with ``key`` if not None."""

    def __init__(self, problem, run_dir: Path, key: Optional[bytes], logger):
        self.problem = problem
        self.run_dir = run_dir
        self.key = key
        self.logger = logger
        self.writer: Optional[checkpoint.WriteBehind] = None
        """The loop's write-behind (``MethodRun.write_behind``), in whose order pending.json goes."""

    def new_goal(self, policy: PolicyParameters, n_episodes: int, index: int) -> RunEpisodes.Goal:
        """The goal of real batch number ``index``, saved (pending.json) before it is sent, so a
        restarted optimizer can ask for its result again."""
        goal = RunEpisodes.Goal(policy=policy, n_episodes=int(n_episodes), request_id=uuid.uuid4().hex)
        checkpoint.save_pending_request(self.run_dir, {
            'index': int(index), 'request_id': goal.request_id, 'n_episodes': int(n_episodes),
            'policy': policy_fields(policy)}, self.writer)
        return goal

    def sign(self, goal) -> None:
        """Sign a run_episodes goal (again at every send: the bridge refuses old signatures)."""
        if self.key is not None:
            provenance.sign_goal(self.key, goal)

    def read(self, result, version: int):
        """(Trajectories, the message) of a result, which must hold episodes of policy ``version``;
        a malformed batch (faulty bridge) raises, so it is asked for again, never used."""
        batch = conversions.trajectories_from_msg(result.trajectories, **self.problem.trajectory_sizes())
        if batch.policy_version != version:
            raise PeerLost(f'returned episodes of policy version {batch.policy_version}, expected {version}')
        return batch, result.trajectories

    def recover(self, loop, call_once: Callable) -> bool:
        """On resume: the last request sent before the crash, when its batch was never stored,
        is asked of the bridge once with ``kept_result_only`` (``call_once(goal)``); a kept result
        is stored as that batch (the loop then takes it like any batch collected before a crash).
        True if one was."""
        pending = checkpoint.load_pending_request(self.run_dir)
        index = loop.real_batch_count + 1
        if pending is None or pending['index'] != index or checkpoint.real_batch_path(self.run_dir, index).exists():
            return False
        try:
            policy = policy_message(pending['policy'])
            phi, version, _ = conversions.policy_from_msg(policy, self.problem.phi_size())
            goal = RunEpisodes.Goal(policy=policy, n_episodes=int(pending['n_episodes']),
                                    request_id=str(pending['request_id']), kept_result_only=True)
            self.sign(goal)
            batch, _ = self.read(call_once(goal), version)
        except (KeyError, TypeError, ValueError, PeerLost, TimeoutError) as err:
            self.logger.info(f'real batch {index} was requested before the restart but the bridge has no '
                             f'result kept for it ({err}): it is collected anew')
            return False
        checkpoint.save_real_batch(self.run_dir, index, batch, {
            'iteration': loop.iteration + 1, 'rng_after': loop.rng.bit_generator.state}, phi)
        self.logger.info(f'real batch {index} ({batch.rewards.shape[0]} episodes), run on the robot while this '
                         'node was down, recovered from the bridge')
        return True
