"""Fixtures shared by the test files.

ROS tests run real DDS on this machine while other test runs may do the same, so each test
that asks for ``ros_domain_id`` gets a ROS_DOMAIN_ID that no other test here holds (claimed
with a lock file for the test's duration), discovery limited to localhost and a ROS log
folder inside its tmp_path.  ``ros_env`` is the environment for node subprocesses;
``ros_context`` an initialised rclpy context on the same domain for the test itself.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1]

# Fast DDS puts domain d on UDP ports 7400 + 250*d + ...; up to d = 101 they stay below
# Linux's ephemeral port range (32768 and up), where another program could hold them.
DOMAIN_IDS = range(1, 102)
LOCK_DIR = Path(tempfile.gettempdir()) / 'sim2real_bilevel_ros_domains'


_domains_taken = [0]     # by this process so far: each test starts its search one further on


@pytest.fixture
def ros_domain_id():
    """A ROS_DOMAIN_ID held exclusively by this test (across processes on this machine).  The next
    test in this process starts its search one domain further, so that it does not meet what a
    test may leave in its domain (DDS entities of nodes built in the test process outlive their
    context: ``test_nodes.close_in_process_nodes``)."""
    LOCK_DIR.mkdir(exist_ok=True)
    start = (os.getpid() * 37 + _domains_taken[0]) % len(DOMAIN_IDS)
    _domains_taken[0] += 1
    for offset in range(len(DOMAIN_IDS)):
        domain = DOMAIN_IDS[(start + offset) % len(DOMAIN_IDS)]
        handle = open(LOCK_DIR / f'{domain}.lock', 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            yield domain
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    pytest.fail(f'every ROS_DOMAIN_ID in {DOMAIN_IDS} is held by another test (locks in {LOCK_DIR})')


@pytest.fixture
def ros_env(ros_domain_id, tmp_path, monkeypatch) -> dict:
    """The environment for node subprocesses of this test; also applied to this process
    (so an rclpy context created here joins the same domain)."""
    log_dir = tmp_path / 'ros_log'
    log_dir.mkdir(exist_ok=True)
    monkeypatch.setenv('ROS_DOMAIN_ID', str(ros_domain_id))
    monkeypatch.setenv('ROS_LOG_DIR', str(log_dir))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    monkeypatch.delenv('ROS_LOCALHOST_ONLY', raising=False)      # deprecated; conflicts with the range
    monkeypatch.delenv('ROS_STATIC_PEERS', raising=False)
    environment = dict(os.environ)
    environment.update(
        PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1',
        PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get('PYTHONPATH')])))
    return environment


@pytest.fixture
def ros_context(ros_env):
    """An initialised rclpy Context on this test's domain, shut down afterwards."""
    rclpy = pytest.importorskip('rclpy')
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env['ROS_DOMAIN_ID']))
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def run_quick_bench():
    """``run(script, out, timeout)``: ``bench/SCRIPT --quick --workers 1 --out OUT`` in a fresh
    interpreter; asserts it exits 0 (its stderr in the message) and returns its jobs.jsonl records."""
    return _run_quick_bench


def _run_quick_bench(script: str, out: Path, timeout: float) -> list[dict]:
    import json
    import subprocess
    import sys
    path = Path(__file__).resolve().parents[1] / 'bench' / script
    done = subprocess.run([sys.executable, str(path), '--quick', '--workers', '1', '--out', str(out)],
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in (out / 'jobs.jsonl').read_text().splitlines()]
