"""Policy keys and HMAC signatures of canonical records -- no ROS in here.

A key file holds a shared secret (32 random bytes as hex, mode 0600; ``sim2real-bilevel keygen
PATH`` makes one).  A record is signed as HMAC-SHA256 over a scheme tag, the record's fields as
canonical JSON (sorted keys) and an optional binary payload (e.g. the policy's float64 values,
which JSON would not carry bit-exactly).  ``SignatureVerifier`` refuses a record that is
unsigned, altered, signed with another key, older than ``max_age_s`` (or as far in the future),
or a replay of a signature it already took.  The ROS side (which fields of a RunEpisodes goal
are signed) is ``nodes/provenance.py``.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Optional

SCHEME = b'sim2real_bilevel/run_episodes/hmac-sha256/v1\n'
KEY_BYTES = 32


class ProvenanceError(ValueError):
    """A key file that cannot be used, or a record that does not verify; the message says why."""


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


def digest(key: bytes, fields: dict, payload: bytes = b'') -> bytes:
    """HMAC-SHA256 of a record: ``fields`` as canonical JSON, then ``payload``."""
    header = json.dumps(fields, sort_keys=True).encode()
    return hmac.new(key, SCHEME + header + b'\0' + payload, hashlib.sha256).digest()


def sign(key: bytes, fields: dict, payload: bytes = b'') -> str:
    """The signature (hex) of a record; ``fields`` should hold its signing time."""
    return digest(key, fields, payload).hex()


class SignatureVerifier:
    """Checks signed records: signature, age and replay."""

    def __init__(self, key: bytes, max_age_s: float):
        self.key = key
        self.max_age_s = float(max_age_s)
        self.seen: dict[str, float] = {}       # signature -> signed_at, while younger than max_age_s

    def refusal(self, signature: str, signed_at: float, fields: dict, payload: bytes = b'',
                now: Optional[float] = None) -> Optional[str]:
        """Why the record is not an authentic, fresh record of the key's holder, or None."""
        now = time.time() if now is None else now
        if not signature:
            return 'unsigned goal: this bridge takes only goals signed with its policy key (policy_key_file)'
        try:
            given = bytes.fromhex(signature)
        except ValueError:
            return 'malformed signature: expected hexadecimal digits'
        if not math.isfinite(signed_at):
            return f'signed_at={signed_at}: not a time'
        if not hmac.compare_digest(given, digest(self.key, fields, payload)):
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
        return None
