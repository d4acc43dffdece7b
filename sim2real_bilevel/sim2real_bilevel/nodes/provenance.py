"""Policy provenance on the graph: run_episodes goals signed by the optimizer, verified by the bridge.

The Fast DDS in the PyPI wheels has no DDS-Security (docs/security.md), so any participant
on the domain can send the bridge a goal.  With a shared secret key (``policy_key_file`` on
both nodes; ``sim2real-bilevel keygen PATH`` makes one) the optimizer signs every
``RunEpisodes`` goal with HMAC-SHA256 over everything the robot will do -- the policy (kind,
shape, values, versions), ``n_episodes``, ``request_id``, ``kept_result_only`` and
``signed_at`` -- and the bridge refuses a goal that is unsigned, altered, signed with another
key, older than ``max_goal_age_s`` (or as far in the future), or a replay of a signature it
already took.  Keys and signatures themselves are ``core/provenance.py``; this module says
which fields of a goal are signed.

What it does not give: confidentiality (goals and results travel in clear), protection of the
other topics and services, or authentication of who *reads*.  For those use a ROS 2 build with
DDS-Security (docs/security.md).
"""
from __future__ import annotations

import os
import time
from typing import Optional

import numpy as np

from ..core.provenance import ProvenanceError, SignatureVerifier, digest, load_key  # noqa: F401 (the nodes' names)
from ..graph import POLICY_KEY_ENV


def key_file_setting(parameter: str) -> str:
    """The key file a node uses: its ``policy_key_file`` parameter, else $SIM2REAL_POLICY_KEY_FILE
    (what ``launch ... policy_key_file:=PATH`` sets), else '' (unsigned)."""
    return parameter or os.environ.get(POLICY_KEY_ENV, '')


def goal_record(goal) -> tuple[dict, bytes]:
    """The signed part of a RunEpisodes goal: every field except ``signature`` itself, as
    canonical fields plus the policy values (little-endian float64)."""
    policy = goal.policy
    fields = {
        'request_id': str(goal.request_id), 'kept_result_only': bool(goal.kept_result_only),
        'n_episodes': int(goal.n_episodes), 'signed_at': float(goal.signed_at),
        'kind': str(policy.kind), 'shape': [int(s) for s in policy.shape], 'version': int(policy.version),
        'theta_version': int(policy.theta_version), 'inner_grad_norm': float(policy.inner_grad_norm),
    }
    return fields, np.asarray(policy.values, dtype='<f8').tobytes()


def goal_digest(key: bytes, goal) -> bytes:
    """HMAC-SHA256 of a RunEpisodes goal, over every field except ``signature`` itself."""
    return digest(key, *goal_record(goal))


def sign_goal(key: bytes, goal, now: float | None = None):
    """Stamp ``goal.signed_at`` (UNIX seconds) and set ``goal.signature``; returns the goal."""
    goal.signed_at = float(time.time() if now is None else now)
    goal.signature = goal_digest(key, goal).hex()
    return goal


class GoalVerifier:
    """The bridge's check of signed goals: signature, age and replay."""

    def __init__(self, key: bytes, max_age_s: float):
        self.verifier = SignatureVerifier(key, max_age_s)

    @property
    def seen(self) -> dict[str, float]:
        """Signatures taken, while younger than ``max_age_s`` (the replay memory)."""
        return self.verifier.seen

    def refusal(self, goal, now: float | None = None) -> Optional[str]:
        """Why the goal is not an authentic, fresh goal of the key's holder, or ''."""
        fields, payload = goal_record(goal)
        return self.verifier.refusal(str(goal.signature), float(goal.signed_at), fields, payload, now)
