"""``sim2real-bilevel bridge ...``: the operator's lifecycle, e-stop and status commands, run
as separate processes against a real bridge process (what a pip-only user has instead of
``ros2 lifecycle`` / ``ros2 service call``)."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

from test_nodes import PROBLEM, ros  # noqa: E402,F401 (ros: the fixture)

pytestmark = pytest.mark.ros


def operator(ros, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'sim2real_bilevel.cli', 'bridge', *arguments],
                          capture_output=True, text=True, env=ros.environment, timeout=120)


def test_the_operator_walks_the_bridge_through_its_lifecycle_and_e_stop(ros):
    bridge = ros.start('hardware_bridge', problem=PROBLEM, autostart='false', transport='topics')
    steps = [(('status', '--timeout', '60'), 0, '/hardware_bridge: unconfigured'),
             (('activate',), 1, 'activate: refused; the bridge is unconfigured'),       # not configured yet
             (('configure',), 0, 'configure: done; the bridge is inactive'),
             (('activate',), 0, 'activate: done; the bridge is active'),
             (('estop',), 0, 'estop: '),
             (('status',), 0, '/hardware_bridge: active'),
             (('reset-estop',), 0, 'reset-estop: e-stop cleared'),
             (('deactivate',), 0, 'deactivate: done; the bridge is inactive'),
             (('cleanup',), 0, 'cleanup: done; the bridge is unconfigured')]
    for arguments, status, text in steps:
        result = operator(ros, *arguments)
        assert result.returncode == status and text in result.stdout, (arguments, result.stdout, result.stderr,
                                                                        bridge.log()[-2000:])
    assert 'E-STOP latched' in bridge.log() and 'e-stop reset by ~/reset_estop' in bridge.log()
    assert bridge.alive()


def test_a_bridge_that_is_not_there_is_named_with_exit_2(ros):
    result = operator(ros, 'status', '--node', '/nowhere/hardware_bridge', '--timeout', '1')
    assert result.returncode == 2
    assert '/nowhere/hardware_bridge/get_state is not available within 1 s' in result.stderr
