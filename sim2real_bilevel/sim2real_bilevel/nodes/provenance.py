"""Policy provenance: run_episodes goals signed by the optimizer, verified by the bridge.

The Fast DDS in the PyPI wheels has no DDS-Security (docs/security.md), so any participant
on the domain can send the bridge a goal.  With a shared secret key (``policy_key_file`` on
both nodes; ``sim2real-bilevel keygen PATH`` makes one) the optimizer signs every
``RunEpisodes`` goal with HMAC-SHA256 over everything the robot will do -- the policy (kind,
shape, values, versions), ``n_episodes``, ``request_id``, ``kept_result_only`` and
``signed_at`` -- and the bridge
refuses a goal that is unsigned, altered, signed with another key, older than
``max_goal_age_s`` (or as far in the future), or a replay of a signature it already took.

What it does not give: confidentiality (goals and results travel in clear), protection of the
other topics and services, or authentication of who *reads*.  For those use a ROS 2 build with
DDS-Security (docs/security.md).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from pathlib import Path

import numpy as np

from ..graph import POLICY_KEY_ENV

SCHEME = b'sim2real_bilevel/run_episodes/hmac-sha256/v1\n'
KEY_BYTES = 32


class ProvenanceError(ValueError):
    """A key file that cannot be used, or a goal that does not verify; the message says why."""


def key_file_setting(parameter: str) -> str:
    """The key file a node uses: its ``policy_key_file`` parameter, else $SIM2REAL_POLICY_KEY_FILE
    (what ``launch ... policy_key_file:=PATH`` sets), else '' (unsigned)."""
    return parameter or os.environ.get(POLICY_KEY_ENV, '')


def generate_key_file(path) -> Path:
    """Write a new random key (hex, 32 bytes) to ``path`` with mode 0600; never overwrites."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ProvenanceError(f'{path} already exists: a key is never overwritten (remove it first if you mean '
                              'to replace it, and give the new one to both the optimizer and the bridge)') from None
    with os.fdopen(fd, 'w') as handle:
        handle.write(secrets.token_hex(KEY_BYTES) + '\n')
    return path


def load_key(path) -> bytes:
    """The key in ``path``: a regular file, readable by its owner only, holding at least 32
    bytes as hex.  Errors name the file and what is wrong with it."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ProvenanceError(f'policy key file {path}: no such file (make one with `sim2real-bilevel keygen '
                              f'{path}`)') from None
    if not stat.S_ISREG(info.st_mode):
        raise ProvenanceError(f'policy key file {path}: not a regular file')
    if info.st_mode & 0o077:
        raise ProvenanceError(f'policy key file {path}: mode {stat.S_IMODE(info.st_mode):04o} lets other users '
                              f'read it; `chmod 600 {path}`')
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ProvenanceError(f'policy key file {path}: expected hexadecimal digits only') from None
    if len(key) < KEY_BYTES:
        raise ProvenanceError(f'policy key file {path}: {len(key)} bytes, expected at least {KEY_BYTES}')
    return key


def goal_digest(key: bytes, goal) -> bytes:
    """HMAC-SHA256 of a RunEpisodes goal, over every field except ``signature`` itself."""
    policy = goal.policy
    header = json.dumps({
        'request_id': str(goal.request_id), 'kept_result_only': bool(goal.kept_result_only),
        'n_episodes': int(goal.n_episodes), 'signed_at': float(goal.signed_at),
        'kind': str(policy.kind), 'shape': [int(s) for s in policy.shape], 'version': int(policy.version),
        'theta_version': int(policy.theta_version), 'inner_grad_norm': float(policy.inner_grad_norm),
    }, sort_keys=True).encode()
    values = np.asarray(policy.values, dtype='<f8').tobytes()
    return hmac.new(key, SCHEME + header + b'\0' + values, hashlib.sha256).digest()


def sign_goal(key: bytes, goal, now: float | None = None):
    """Stamp ``goal.signed_at`` (UNIX seconds) and set ``goal.signature``; returns the goal."""
    goal.signed_at = float(time.time() if now is None else now)
    goal.signature = goal_digest(key, goal).hex()
    return goal


class GoalVerifier:
    """The bridge's check of signed goals: signature, age and replay."""

    def __init__(self, key: bytes, max_age_s: float):
        self.key = key
        self.max_age_s = float(max_age_s)
        self.seen: dict[str, float] = {}       # signature -> signed_at, while younger than max_age_s

    def refusal(self, goal, now: float | None = None) -> str:
        """Why the goal is not an authentic, fresh goal of the key's holder, or ''."""
        now = time.time() if now is None else now
        signature = str(goal.signature)
        if not signature:
            return 'unsigned goal: this bridge takes only goals signed with its policy key (policy_key_file)'
        try:
            given = bytes.fromhex(signature)
        except ValueError:
            return 'malformed signature: expected hexadecimal digits'
        signed_at = float(goal.signed_at)
        if not np.isfinite(signed_at):
            return f'signed_at={signed_at}: not a time'
        if not hmac.compare_digest(given, goal_digest(self.key, goal)):
            return 'the signature does not verify: the goal was not signed with this bridge\'s policy key, or was ' \
                   'altered on the way'
        age = now - signed_at
        if abs(age) > self.max_age_s:
            when = f'{age:.1f} s ago' if age > 0 else f'{-age:.1f} s in the future'
            return (f'goal signed {when}, beyond max_goal_age_s={self.max_age_s:g} (a replay, or the clocks of the '
                    'optimizer and bridge hosts disagree)')
        self.seen = {s: t for s, t in self.seen.items() if now - t <= self.max_age_s}
        if signature in self.seen:
            return 'replayed goal: this signature was already taken'
        self.seen[signature] = signed_at
        return ''


def add_keygen_command(commands) -> None:
    parser = commands.add_parser('keygen', help='make a policy key (mode 0600) for signed run_episodes goals')
    parser.add_argument('path', help='key file to create (never overwritten); give it to the outer_optimizer and '
                                     'the hardware_bridge as policy_key_file')
    parser.set_defaults(func=cmd_keygen)


def cmd_keygen(args) -> int:
    import sys
    try:
        path = generate_key_file(args.path)
    except (ProvenanceError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'wrote {path} (mode 0600): set policy_key_file:={path.resolve()} on the outer_optimizer and the '
          'hardware_bridge')
    return 0
