"""Policy provenance (core/provenance.py, nodes/provenance.py): keys, signatures, freshness and replays."""
from __future__ import annotations

import os

import pytest

pytest.importorskip('sim2real_bilevel_interfaces')

from sim2real_bilevel.nodes import conversions  # noqa: E402
from sim2real_bilevel.core.provenance import ProvenanceError, generate_key_file, load_key  # noqa: E402
from sim2real_bilevel.nodes.provenance import GoalVerifier, sign_goal  # noqa: E402
from sim2real_bilevel_interfaces.action import RunEpisodes  # noqa: E402

NOW = 1_800_000_000.0


def make_goal(**changes) -> RunEpisodes.Goal:
    goal = RunEpisodes.Goal(policy=conversions.policy_to_msg([0.1, -0.2, 0.3], 7, 3, 0.01), n_episodes=2,
                            request_id='run-a:5')
    for name, value in changes.items():
        setattr(goal, name, value)
    return goal


@pytest.fixture
def key(tmp_path) -> bytes:
    return load_key(generate_key_file(tmp_path / 'keys' / 'policy.key'))


def test_generated_key_is_private_random_and_never_overwritten(tmp_path):
    path = generate_key_file(tmp_path / 'policy.key')
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(load_key(path)) == 32
    assert load_key(path) != load_key(generate_key_file(tmp_path / 'other.key'))
    before = path.read_text()
    with pytest.raises(ProvenanceError, match='already exists'):
        generate_key_file(path)
    assert path.read_text() == before


@pytest.mark.parametrize('content,mode,message', [
    ('ab' * 32, 0o644, 'lets other users read it'),
    ('ab' * 16, 0o600, '16 bytes, expected at least 32'),
    ('not hex at all', 0o600, 'hexadecimal'),
])
def test_unusable_key_files_are_refused_with_the_reason(tmp_path, content, mode, message):
    path = tmp_path / 'policy.key'
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(ProvenanceError, match=message) as err:
        load_key(path)
    assert str(path) in str(err.value)


def test_missing_key_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ProvenanceError, match='keygen'):
        load_key(tmp_path / 'absent.key')


def test_a_signed_goal_verifies_once(key):
    verifier = GoalVerifier(key, max_age_s=30.0)
    goal = sign_goal(key, make_goal(), now=NOW)
    assert verifier.refusal(goal, now=NOW + 1.0) is None
    assert 'replayed' in verifier.refusal(goal, now=NOW + 2.0)
    # signed again (a re-send): a new signature, accepted
    assert verifier.refusal(sign_goal(key, goal, now=NOW + 3.0), now=NOW + 3.5) is None


@pytest.mark.parametrize('field,value', [
    ('n_episodes', 3), ('request_id', 'run-a:6'), ('kept_result_only', True), ('signed_at', NOW + 1.0),
])
def test_any_altered_goal_field_breaks_the_signature(key, field, value):
    goal = sign_goal(key, make_goal(), now=NOW)
    setattr(goal, field, value)
    assert 'does not verify' in GoalVerifier(key, 30.0).refusal(goal, now=NOW)


@pytest.mark.parametrize('field,value', [
    ('values', [0.1, -0.2, 0.30000000000000004]), ('version', 8), ('theta_version', 4), ('inner_grad_norm', 0.02),
    ('kind', 'other'), ('shape', [1, 3]),
])
def test_any_altered_policy_field_breaks_the_signature(key, field, value):
    goal = sign_goal(key, make_goal(), now=NOW)
    setattr(goal.policy, field, value)
    assert 'does not verify' in GoalVerifier(key, 30.0).refusal(goal, now=NOW)


def test_unsigned_foreign_and_malformed_signatures_are_refused(key, tmp_path):
    verifier = GoalVerifier(key, 30.0)
    assert 'unsigned' in verifier.refusal(make_goal(), now=NOW)
    other = load_key(generate_key_file(tmp_path / 'other.key'))
    assert 'does not verify' in verifier.refusal(sign_goal(other, make_goal(), now=NOW), now=NOW)
    assert 'hexadecimal' in verifier.refusal(make_goal(signature='zz' * 32, signed_at=NOW), now=NOW)
    assert 'not a time' in verifier.refusal(make_goal(signature='ab' * 32, signed_at=float('nan')), now=NOW)


def test_old_and_future_signatures_are_refused(key):
    verifier = GoalVerifier(key, max_age_s=30.0)
    assert '40.0 s ago' in verifier.refusal(sign_goal(key, make_goal(), now=NOW - 40.0), now=NOW)
    assert 'in the future' in verifier.refusal(sign_goal(key, make_goal(), now=NOW + 40.0), now=NOW)
    assert verifier.refusal(sign_goal(key, make_goal(), now=NOW - 29.0), now=NOW) is None


def test_the_replay_memory_forgets_only_what_age_refuses_anyway(key):
    verifier = GoalVerifier(key, max_age_s=30.0)
    goals = [sign_goal(key, make_goal(), now=NOW + i) for i in range(50)]
    assert [verifier.refusal(goal, now=NOW + i + 0.5) for i, goal in enumerate(goals)] == [None] * 50
    assert len(verifier.seen) <= 31                       # bounded by max_age_s, not by the run length
    replays = [verifier.refusal(goal, now=NOW + 50.0) for goal in goals]
    assert all('replayed' in r for r in replays[21:]) and all('s ago' in r for r in replays[:20])
