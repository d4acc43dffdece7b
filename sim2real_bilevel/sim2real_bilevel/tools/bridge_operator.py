"""``sim2real-bilevel bridge ...``: the operator's commands for the hardware bridge without the
``ros2`` CLI (a pip-only install has no ``ros2 lifecycle`` / ``ros2 service``).

They call the same services those tools call: ``<bridge>/change_state`` and
``<bridge>/get_state`` (lifecycle_msgs), ``<bridge>/estop`` and ``<bridge>/reset_estop``
(std_srvs/Trigger), ``<bridge>/continue_episode`` (std_srvs/SetBool: ``continue`` true,
``abort`` false, answering a bridge that waits for the operator before an episode, reset_mode
operator), and read the bridge's latest ``/diagnostics`` status (it says what the bridge waits for).

    sim2real-bilevel bridge configure|activate|deactivate|cleanup|estop|reset-estop|continue|abort|status
        [--node /ns/hardware_bridge] [--timeout 10]

Exit status: 0 done, 1 refused by the bridge (e.g. continue while nothing awaits the operator),
2 the bridge did not answer (not running, other ROS_DOMAIN_ID, ...).
"""
from __future__ import annotations

import sys
import time

TRANSITIONS = {'configure': ('TRANSITION_CONFIGURE', 'inactive'), 'activate': ('TRANSITION_ACTIVATE', 'active'),
               'deactivate': ('TRANSITION_DEACTIVATE', 'inactive'), 'cleanup': ('TRANSITION_CLEANUP', 'unconfigured')}
TRIGGERS = {'estop': 'estop', 'reset-estop': 'reset_estop'}
OPERATOR_ANSWERS = {'continue': True, 'abort': False}
ACTIONS = tuple(TRANSITIONS) + tuple(TRIGGERS) + tuple(OPERATOR_ANSWERS) + ('status',)
ASK_AGAIN_S = 3.0
"""A request unanswered this long is sent again (an answer can be lost while discovery completes)."""


class Unanswered(Exception):
    pass


class BridgeOperator:
    """A node of its own that calls one bridge's services."""

    def __init__(self, bridge: str, timeout_s: float):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        rclpy.init(args=[])
        self.node = rclpy.create_node('bridge_operator', start_parameter_services=False)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.bridge = bridge.rstrip('/') if bridge.startswith('/') else '/' + bridge.rstrip('/')
        self.timeout_s = timeout_s

    def close(self) -> None:
        import rclpy
        self.node.destroy_node()
        rclpy.try_shutdown()

    def call(self, service_type, name: str, request, idempotent: bool = True):
        """The service's answer; a lost request or answer is asked again (only for idempotent
        requests: a transition is instead confirmed through get_state by the caller)."""
        client = self.node.create_client(service_type, f'{self.bridge}/{name}')
        deadline = time.monotonic() + self.timeout_s
        while not client.service_is_ready():
            if time.monotonic() > deadline:
                raise Unanswered(f'{self.bridge}/{name} is not available within {self.timeout_s:g} s (is the '
                                 'bridge running, on this ROS_DOMAIN_ID?)')
            self.executor.spin_once(timeout_sec=0.05)
        future = client.call_async(request)
        asked = time.monotonic()
        while not future.done():
            now = time.monotonic()
            if now > deadline:
                raise Unanswered(f'{self.bridge}/{name} did not answer within {self.timeout_s:g} s')
            if idempotent and now - asked > ASK_AGAIN_S:
                client.remove_pending_request(future)
                future, asked = client.call_async(request), now
            if not idempotent and now - asked > ASK_AGAIN_S:
                raise Unanswered(f'{self.bridge}/{name}: no answer within {ASK_AGAIN_S:g} s')
            self.executor.spin_once(timeout_sec=0.05)
        return future.result()

    def state(self) -> str:
        from lifecycle_msgs.srv import GetState
        return self.call(GetState, 'get_state', GetState.Request()).current_state.label

    def transition(self, action: str) -> tuple[bool, str]:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        transition, target = TRANSITIONS[action]
        request = ChangeState.Request(transition=Transition(id=getattr(Transition, transition)))
        try:
            success = self.call(ChangeState, 'change_state', request, idempotent=False).success
        except Unanswered:
            success = None              # the answer may be what was lost: the state tells
        state = self.state()
        if success is None:
            success = state == target
        return bool(success), f'{action}: {"done" if success else "refused"}; the bridge is {state}'

    def trigger(self, action: str) -> tuple[bool, str]:
        from std_srvs.srv import Trigger
        response = self.call(Trigger, TRIGGERS[action], Trigger.Request())
        return bool(response.success), f'{action}: {response.message}'

    def answer(self, action: str) -> tuple[bool, str]:
        """Continue or abort what waits for the operator -- sent once: a repeated 'continue' could
        start the next episode too."""
        from std_srvs.srv import SetBool
        response = self.call(SetBool, 'continue_episode', SetBool.Request(data=OPERATOR_ANSWERS[action]),
                             idempotent=False)
        return bool(response.success), f'{action}: {response.message}'

    def status(self) -> tuple[bool, str]:
        """The lifecycle state, then the bridge's newest diagnostics status if one arrives within
        a second (the bridge publishes on events and each second's command-channel check)."""
        from diagnostic_msgs.msg import DiagnosticArray
        from ..nodes.runtime import EVENTS
        state = self.state()
        seen = []
        name = f'{self.bridge}: bridge'

        def on_diagnostics(msg):
            seen.extend(s for s in msg.status if s.name == name)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, EVENTS)
        deadline = time.monotonic() + 1.0
        while not seen and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        lines = [f'{self.bridge}: {state}']
        if seen:
            lines.append(f'  {seen[-1].message}')
            lines += [f'  {value.key}: {value.value}' for value in seen[-1].values]
        return True, '\n'.join(lines)


def cmd_bridge(args) -> int:
    try:
        operator = BridgeOperator(args.node, args.timeout)
    except Exception as err:          # noqa: BLE001 -- rclpy not importable / init failed: say why
        print(f'error: cannot start a ROS node: {err}', file=sys.stderr)
        return 2
    try:
        if args.action in TRANSITIONS:
            ok, text = operator.transition(args.action)
        elif args.action in TRIGGERS:
            ok, text = operator.trigger(args.action)
        elif args.action in OPERATOR_ANSWERS:
            ok, text = operator.answer(args.action)
        else:
            ok, text = operator.status()
    except Unanswered as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    finally:
        operator.close()
    print(text)
    return 0 if ok else 1


def add_bridge_command(commands) -> None:
    bridge = commands.add_parser('bridge', help='operate the hardware bridge: lifecycle, e-stop, operator '
                                                'resets (continue / abort), status '
                                                '(the services ros2 lifecycle / ros2 service call use)')
    bridge.add_argument('action', choices=ACTIONS)
    bridge.add_argument('--node', default='/hardware_bridge',
                        help='the bridge node, with its namespace (default /hardware_bridge)')
    bridge.add_argument('--timeout', type=float, default=10.0, help='seconds to wait for the bridge')
    bridge.set_defaults(func=cmd_bridge)
