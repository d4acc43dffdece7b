"""Episode resets of the topic transport: how the robot returns to an initial state before each
episode, chosen by the hardware bridge's ``reset_mode`` (read before every episode).

- ``service``: the robot's own reset procedure, the std_srvs/Trigger ``reset_service`` (the
  emulator's ``robot_emulator/reset``), answered within ``reset_timeout_s``; a request left
  unanswered half that time is sent once more.
- ``scripted``: the bridge drives the joints to a start pose -- ``reset_pose`` entries
  ``joint=position`` (comma-separated) by name, other joints at the problem's ``start_pose()`` (the mean of its
  initial-state distribution) -- with a PID law per joint (``ResetLaw``), effort = hold + kp (q* - q) - kd qd
  + ki * integral (q* - q) dt.
  By default the gains come from the user's own model (the problem's ``reset_response(pose)`` at
  the target pose: each joint's velocity answer over one control period to its command and to its
  displacement, and the hold commands): the joint's closed loop, linearised, has poles at -w
  (double) and -w / INTEGRAL_SLOWER, w = ``reset_bandwidth`` / control period, gravity's tipping
  included.  ``reset_kp`` > 0 sets fixed PD gains ``reset_kp``, ``reset_kd`` for every joint
  instead (a problem without a model: FALLBACK_GAINS, no integral).  The model's answer is computed
  at configure for the configured pose; for a pose set later (``ros2 param set ... reset_pose``)
  at the next scripted reset, in the bridge's worker thread (~0.5 s on the iiwa), so that the
  executor serves the e-stop meanwhile (an e-stop or a deactivation ends the wait).  It runs
  under the bridge's own per-joint limits (``nodes/joints.py``): the CommandFilter (effort and
  rate limits, from a zero command like an episode) and the state bounds (position and velocity
  limits).  One command per joint_states: a lockstep robot steps on them, a
  real-time one follows them (a robot that has published no state yet is asked for one with
  zero commands, one per ``watchdog_timeout_s``).  The pose is reached once every joint is within
  ``reset_position_tolerance`` of its target and ``reset_velocity_tolerance`` of rest for
  ``reset_settle_samples`` readings in a row; it is not reached within
  ``scripted_reset_timeout_s`` from the robot's first state (or a bound is crossed, or joint_states go stale for
  ``watchdog_timeout_s``): zero command, and the episode is refused with the joint's state.
- ``operator``: zero command (a person may now handle the robot), then the goal's feedback
  (``status``), the bridge's log and its /diagnostics say the bridge waits for the operator,
  who puts the robot in its start pose and answers on ``~/continue_episode``
  (std_srvs/SetBool: true continues, false aborts the goal; ``sim2real-bilevel bridge
  continue|abort``).  No answer within ``operator_timeout_s`` aborts the goal.

An e-stop or a deactivation ends any reset at once: the wait stops, a zero command goes out (the
e-stop and the deactivation send one themselves) and the goal fails with the reason.  The robot's
own reset procedure (``service``) is the robot's: its motion stops on the robot's e-stop.
After a successful reset the transport's ``latest_state`` is None or a state measured after it.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence, Union

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.task import Future
from std_srvs.srv import SetBool, Trigger

from .joints import named_numbers
from .runtime import ParameterSpec
from .safety import JointBounds

RESET_MODES = ('service', 'scripted', 'operator')

RESET_PARAMETERS = [
    ParameterSpec('reset_mode', 'service', "how the robot returns to an initial state before each episode of the "
                  "topic transport: 'service' (the robot's reset_service), 'scripted' (the bridge drives the joints "
                  "to reset_pose) or 'operator' (a person resets it and answers ~/continue_episode); applies from "
                  'the next episode', choices=RESET_MODES),
    ParameterSpec('reset_pose', '', "scripted reset: start positions, 'joint=position' entries (rad) separated by "
                  "commas; joints not named start at the problem's start pose (the mean of its initial states)"),
    ParameterSpec('reset_kp', 0.0, "scripted reset: a fixed PD stiffness for every joint (N m per rad of position "
                  "error); 0 = each joint's gains from the problem's model and reset_bandwidth", low=0.0, high=1e6),
    ParameterSpec('reset_kd', 1.0, 'scripted reset: the fixed PD damping (N m per rad/s of velocity), with '
                  'reset_kp > 0', low=0.0, high=1e6),
    ParameterSpec('reset_bandwidth', 0.25, "scripted reset with the model's gains: the closed loop's double pole, "
                  'in rad per control period (smaller: slower, more tolerant of delay)', low=1e-3, high=1.0),
    ParameterSpec('reset_position_tolerance', 0.05, 'scripted reset: largest |position - target| (rad) of a '
                  'reached start pose', low=1e-9, high=1e6),
    ParameterSpec('reset_velocity_tolerance', 0.25, 'scripted reset: largest |velocity| (rad/s) of a reached start '
                  'pose (above the sensor noise)', low=1e-9, high=1e6),
    ParameterSpec('reset_settle_samples', 3, 'scripted reset: joint_states in a row within both tolerances',
                  low=1, high=100000),
    ParameterSpec('scripted_reset_timeout_s', 30.0, 'scripted reset: longest drive to the start pose before the '
                  'episode is refused (zero command)', low=0.01, high=3600.0),
    ParameterSpec('operator_timeout_s', 300.0, 'operator reset: longest wait for ~/continue_episode before the '
                  'goal is aborted', low=0.01, high=86400.0),
]


def start_pose(text: str, joints: Sequence[str], default: Optional[Sequence[float]],
               bounds: Union[float, JointBounds]) -> np.ndarray:
    """The scripted reset's target, ordered like ``joints``: the entries of ``text``
    ('joint=position, ...') by name over ``default`` (the problem's start pose, problem order),
    inside ``bounds`` (each joint's position limits, or one symmetric +- limit for all).
    ValueError naming the bad entry, or the joints left without a target."""
    joints = list(joints)
    pose: dict[str, float] = {}
    if default is not None:
        if len(default) != len(joints):
            raise ValueError(f"the problem's start pose {list(default)} has {len(default)} position(s), the bridge "
                             f'has {len(joints)} joint(s) {joints}: set reset_pose for each joint')
        pose = {joint: float(value) for joint, value in zip(joints, default)}
    for entry, name, position in named_numbers(text, 'reset_pose', 'joint=position', f'{joints[0]}=0.0',
                                               what='position'):
        if name not in joints:
            raise ValueError(f'reset_pose entry {entry!r}: {name!r} is not one of the joints {joints}')
        pose[name] = position
    missing = [joint for joint in joints if joint not in pose]
    if missing:
        raise ValueError(f"no start position for the joint(s) {missing}: the problem gives no start pose, name them "
                         f"in reset_pose ('joint=position')")
    for i, joint in enumerate(joints):
        lower, upper = ((-bounds, bounds) if not isinstance(bounds, JointBounds)
                        else (bounds.lower[i], bounds.upper[i]))
        if not lower <= pose[joint] <= upper:
            limits = f'+-{upper:g}' if lower == -upper else f'[{lower:g}, {upper:g}]'
            raise ValueError(f'start position of {joint!r} = {pose[joint]:g} is outside the position limit '
                             f'{limits}')
    return np.array([pose[joint] for joint in joints])


def pd_effort(target: np.ndarray, position: np.ndarray, velocity: np.ndarray, kp, kd) -> np.ndarray:
    """A PD law's effort per joint (``kp``, ``kd``: one value, or one per joint)."""
    return kp * (target - position) - kd * velocity


FALLBACK_GAINS = (10.0, 1.0)
"""Fixed (kp, kd) when the problem gives no model: the pendulum's, before model gains."""


class ResetLaw:
    """The scripted reset's effort per joint, one reading at a time (before the CommandFilter):
    ``hold + kp (q* - q) - kd qd + ki * integral of (q* - q) dt``.  A joint whose effort would
    reach its limit keeps its integral (no wind-up: a saturated loop winding it up overshoots or
    never settles).  ``words`` says where the gains came from; one law per reset (its integral
    starts at zero)."""

    def __init__(self, kp, kd, ki, hold, period: float, effort_range, words: str):
        self.kp, self.kd, self.ki, self.hold = (np.asarray(v, dtype=np.float64) for v in (kp, kd, ki, hold))
        self.period = period
        self.effort_range = np.asarray(effort_range, dtype=np.float64)
        self.integral = np.zeros_like(self.hold)
        self.words = words

    def __call__(self, target: np.ndarray, position: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        base = self.hold + pd_effort(target, position, velocity, self.kp, self.kd)
        grown = self.integral + (target - position) * self.period
        free = np.abs(base + self.ki * grown) < self.effort_range
        self.integral = np.where(free, grown, self.integral)
        return base + self.ki * self.integral

    @staticmethod
    def of(problem, parameters, target: np.ndarray, effort_range) -> 'ResetLaw':
        """The gains of the module docstring, for the pose ``target`` (one entry per joint) under
        the bridge's effort limits ``effort_range``."""
        joints = len(target)
        model = model_response(problem, target)
        hold = np.zeros(joints) if model is None else model.hold
        period = getattr(problem, 'control_period', None) or 0.0
        kp, kd = parameters['reset_kp'], parameters['reset_kd']
        if kp > 0:
            return ResetLaw(np.full(joints, kp), np.full(joints, kd), np.zeros(joints), hold, period, effort_range,
                            f'fixed gains kp {kp:g}, kd {kd:g}')
        if model is None or not period:
            kp, kd = FALLBACK_GAINS
            return ResetLaw(np.full(joints, kp), np.full(joints, kd), np.zeros(joints), hold, period, effort_range,
                            f'fixed gains kp {kp:g}, kd {kd:g} (the problem has no model to derive them from: '
                            'set reset_kp and reset_kd for your robot)')
        w = parameters['reset_bandwidth'] / period
        slow = w / INTEGRAL_SLOWER
        # linearised, per joint: qdd = (command * u + position * dq) / period, with gravity's
        # tipping (position > 0) overcome and its restoring (< 0) not relied on; poles
        # (s + w)^2 (s + slow): a PD's double pole and a slower one that removes what the model
        # lacks (a heavier load, stiction, a weaker motor)
        inertia = period / model.command
        tipping = np.maximum(model.position, 0.0) / period
        kd = inertia * (2.0 * w + slow)
        kp = inertia * (w * w + 2.0 * w * slow + tipping)
        ki = inertia * w * w * slow
        return ResetLaw(kp, kd, ki, hold, period, effort_range,
                        f'gains from the model (poles at -{w:.3g}, -{w:.3g}, -{slow:.3g} rad/s): kp '
                        f'{np.round(kp, 4).tolist()}, kd {np.round(kd, 4).tolist()}, ki {np.round(ki, 4).tolist()}, '
                        f'hold {np.round(hold, 4).tolist()}')


INTEGRAL_SLOWER = 4.0
"""The model gains' integral pole is this many times slower than the PD's double pole."""


def model_response(problem, pose: Sequence[float]):
    """``problem.reset_response(pose)``, once per problem instance and pose (5 s for the first pose
    of a 7-joint URDF model, ~0.5 s for the next: the bridge asks at configure with reset_mode
    scripted, else at the first scripted reset to a pose, off its executor: ``model_known``)."""
    known = problem.__dict__.setdefault('_reset_responses', {})
    key = tuple(float(q) for q in pose)
    if key not in known:
        known[key] = problem.reset_response(key)
    return known[key]


def model_known(problem, pose: Sequence[float]) -> bool:
    """Whether ``model_response(problem, pose)`` is already computed (an instant answer)."""
    return tuple(float(q) for q in pose) in problem.__dict__.get('_reset_responses', {})


def pose_miss(joints: Sequence[str], target: np.ndarray, position: np.ndarray, velocity: np.ndarray,
              position_tolerance: float, velocity_tolerance: float) -> Optional[str]:
    """None when every joint is at its target and at rest (within the tolerances), else the first
    joint that is not."""
    for joint, goal, q, qd in zip(joints, target, position, velocity):
        if not abs(q - goal) <= position_tolerance:
            return f'joint {joint!r} at {q:.4g} rad, target {goal:.4g} +-{position_tolerance:g}'
        if not abs(qd) <= velocity_tolerance:
            return f'joint {joint!r} moving at {qd:.4g} rad/s, at rest is +-{velocity_tolerance:g}'
    return None


def stop_reason(bridge) -> Optional[str]:
    """Why the bridge may not move the robot now (e-stop, not active), or None."""
    if bridge.estopped:
        return f'E-STOP: {bridge.estop_reason}'
    if not bridge.active:
        return 'the bridge was deactivated'
    return None


def answer(success: bool, message: str) -> Trigger.Response:
    return Trigger.Response(success=success, message=message)


class EpisodeResets:
    """The resets of one TopicTransport (``transport``: its ``bridge``, ``latest_state`` and
    ``latest_velocity``); its ROS entities (reset client, ``~/continue_episode``) live as long as it."""

    def __init__(self, transport):
        self.transport = transport
        bridge = self.bridge = transport.bridge
        self.client = bridge.create_client(Trigger, bridge.parameters['reset_service'])
        self.continue_service = bridge.create_service(SetBool, '~/continue_episode', self.continue_callback)
        self.operator_answer: Optional[Future] = None      # while the operator is awaited

    def destroy(self) -> None:
        self.bridge.destroy_client(self.client)
        self.bridge.destroy_service(self.continue_service)

    async def reset(self, efforts: bool, feedback: Callable[[str], None]) -> Trigger.Response:
        """Bring the robot to an initial state by ``reset_mode``; success False with the reason.
        ``efforts``: commands are joint efforts (zero commands are safe and scripted resets possible);
        ``feedback(status)``: tells the goal's client what the bridge waits for."""
        mode = self.bridge.parameters['reset_mode']
        if mode == 'scripted':
            result = await self.scripted(efforts)
        elif mode == 'operator':
            result = await self.operator(efforts, feedback)
        else:
            result = await self.service()
        if result.success:
            self.bridge.get_logger().info(f'reset ({mode}): {result.message}')
        stop = stop_reason(self.bridge)
        if not result.success and stop is not None and stop not in result.message:
            result.message = f'{stop} during the {mode} reset'     # the stop is the reason, whatever it cut short
        return result

    # --- service ----------------------------------------------------------------------------------------
    async def service(self) -> Trigger.Response:
        """The reset service, within ``reset_timeout_s``.  A request sent before DDS has matched the
        client with the service is dropped without an answer, so the service must be ready first,
        and a request unanswered after a while is sent once more."""
        bridge, waits = self.bridge, self.bridge.waits
        timeout = bridge.parameters['reset_timeout_s']
        name = self.client.srv_name
        self.transport.expect_state()                # the episode starts from a state published after the reset
        if not await waits.until(self.client.service_is_ready, timeout):
            return answer(False, f'{name} not available within {timeout:g} s')
        for attempt in range(2):
            future = self.client.call_async(Trigger.Request())
            if await waits.future(future, timeout / 2):
                return future.result()
            self.client.remove_pending_request(future)
            if stop_reason(bridge) is not None:
                break                                # no second request to a stopped robot
        return answer(False, f'{name} did not answer within {timeout:g} s')

    # --- scripted ---------------------------------------------------------------------------------------
    async def scripted(self, efforts: bool) -> Trigger.Response:
        """Drive the joints to the start pose and check it (see the module docstring)."""
        bridge, transport, waits, parameters = self.bridge, self.transport, self.bridge.waits, self.bridge.parameters
        if not efforts:
            return answer(False, 'reset_mode scripted drives joint efforts; this problem\'s commands are not '
                                 'efforts (use reset_mode service or operator)')
        try:
            bounds = bridge.joint_bounds()
            target = start_pose(parameters['reset_pose'], bridge.joints, bridge.problem.start_pose(), bounds)
        except ValueError as err:
            return answer(False, f'scripted reset: {err}')
        joints = bridge.joints
        command_filter = bounds.command_filter()
        if not model_known(bridge.problem, target):
            # a pose set after configure: the model's answer in the worker, the e-stop served meanwhile
            bridge.get_logger().info(f'scripted reset: computing the model\'s gains at the new pose {target.tolist()}')
            computing = bridge.work.start(lambda: model_response(bridge.problem, target))
            if not await waits.future(computing, parameters['scripted_reset_timeout_s']):
                bridge.send_zero_command()
                return answer(False, f'scripted reset to {target.tolist()}: ' + (
                    stop_reason(bridge) or f'the model\'s gains at the pose were not ready within '
                                           f'scripted_reset_timeout_s ({parameters["scripted_reset_timeout_s"]:g} s)')
                    + '; zero command sent')
            if computing.exception() is not None:
                return answer(False, f'scripted reset to {target.tolist()}: the model\'s gains at the pose: '
                                     f'{type(computing.exception()).__name__}: {computing.exception()}')
        law = ResetLaw.of(bridge.problem, parameters, target, bounds.effort)
        settle = parameters['reset_settle_samples']
        tolerances = (parameters['reset_position_tolerance'], parameters['reset_velocity_tolerance'])
        timeout, watchdog = parameters['scripted_reset_timeout_s'], parameters['watchdog_timeout_s']
        started = time.monotonic()
        commands = settled = 0

        def refuse(reason: str) -> Trigger.Response:
            bridge.send_zero_command()
            return answer(False, f'scripted reset to {target.tolist()}: {reason}; zero command sent '
                                 f'({commands} reset commands, filter: {command_filter.counts()}; {law.words})')

        fresh = transport.state_arrived
        asked = 0
        while not fresh():
            # no state yet (the first goal; a lockstep robot publishes only when commanded): a
            # zero command -- the command in force between goals -- asks for one, once per
            # watchdog period (a command sent before DDS matched the robot is lost); within
            # reset_timeout_s, as any wait for the robot to answer: the drive's own clock starts
            # at its first state (a 1 s drive once lost its whole time to discovery here)
            if transport.state_error is not None:
                return refuse(transport.state_error)
            if stop_reason(bridge) is not None or time.monotonic() - started > parameters['reset_timeout_s']:
                return refuse(stop_reason(bridge) or f'no joint_states within reset_timeout_s '
                              f'({parameters["reset_timeout_s"]:g} s, {asked} zero commands sent): the robot '
                              'publishes none (the robot emulator moves only after a reset or with start_running)')
            bridge.send_zero_command()
            asked += 1
            await waits.until(fresh, watchdog)
        started = time.monotonic()
        while True:
            stop = stop_reason(bridge)               # (a state may arrive together with the stop)
            if stop is not None:
                return refuse(stop)
            if transport.state_error is not None:
                return refuse(transport.state_error)
            position, velocity = transport.latest_state, transport.latest_velocity
            if velocity.size != position.size:
                return refuse(f'joint_states without velocities for {joints}: the reset cannot check rest')
            violation = bounds.violation(position, velocity)
            if violation is not None:
                return refuse(f'state bounds: {violation}')
            miss = pose_miss(joints, target, position, velocity, *tolerances)
            settled = 0 if miss is not None else settled + 1
            if settled >= settle:
                elapsed = time.monotonic() - started
                return answer(True, f'start pose {target.tolist()} reached in {commands} commands ({elapsed:.2f} s): '
                                    f'position {position.tolist()}, velocity {velocity.tolist()}; {law.words}')
            if time.monotonic() - started > timeout:
                return refuse(f'start pose not reached within scripted_reset_timeout_s ({timeout:g} s): '
                              f'{miss or f"within the tolerances for only {settled} of {settle} readings"}')
            command = command_filter(law(target, position, velocity))
            transport.expect_state()
            estop = bridge.send_command([float(c) for c in command])
            commands += 1
            if estop is not None:
                return refuse(f'E-STOP: {estop}')
            if not await waits.until(fresh, watchdog):
                return refuse(stop_reason(bridge) or f'watchdog: joint_states stale for {watchdog:g} s')

    # --- operator ---------------------------------------------------------------------------------------
    async def operator(self, efforts: bool, feedback: Callable[[str], None]) -> Trigger.Response:
        """Wait for the operator's answer on ``~/continue_episode`` (see the module docstring)."""
        bridge, transport, waits = self.bridge, self.transport, self.bridge.waits
        timeout = bridge.parameters['operator_timeout_s']
        if efforts:
            bridge.send_zero_command()               # a person may handle the robot now
        transport.expect_state()                     # what the robot reports from now on counts
        node = bridge.get_fully_qualified_name()
        option = '' if node == '/hardware_bridge' else f' --node {node}'
        status = (f'waiting for the operator: put the robot in its start pose, then run `sim2real-bilevel bridge '
                  f'continue{option}` (or `sim2real-bilevel bridge abort{option}`; the service '
                  f'{node}/continue_episode, std_srvs/SetBool); aborts by itself after {timeout:g} s')
        self.operator_answer = Future()
        bridge.get_logger().warning(status)
        bridge.set_reason(status, DiagnosticStatus.WARN)
        feedback(status)
        try:
            answered = await waits.future(self.operator_answer, timeout)
            confirmed = answered and self.operator_answer.result()
        finally:
            self.operator_answer = None
        if not answered:
            return answer(False, f'no answer from the operator within operator_timeout_s ({timeout:g} s)')
        if not confirmed:
            return answer(False, f'aborted by the operator ({node}/continue_episode: false)')
        bridge.set_reason('active: the operator confirmed the start pose', DiagnosticStatus.OK)
        feedback('')
        if efforts and transport.latest_state is None:
            bridge.send_zero_command()               # a lockstep robot answers a command with its state
        return answer(True, 'the operator confirmed the start pose')

    def continue_callback(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        waiting = self.operator_answer
        if waiting is None or waiting.done():
            response.success = False
            response.message = f'nothing awaits the operator (the bridge: {self.bridge.last_reason})'
        else:
            waiting.set_result(bool(request.data))
            response.success = True
            response.message = 'the episode starts' if request.data else 'the goal is aborted'
        self.bridge.get_logger().info(f'~/continue_episode {bool(request.data)}: {response.message}')
        return response
