"""What every node of the graph shares: QoS profiles, declared-and-validated parameters,
problem loading, waiting on futures, background work and the ``main()`` skeleton (action
calls with their timeouts and re-sends: ``action_calls.py``).

Executor choice: these rclpy builds livelock intermittently in ``MultiThreadedExecutor``, so
every process runs one ``SingleThreadedExecutor``.  Long computations (inner training,
sensitivities) run in one plain worker thread while the executor keeps serving cancel
requests, parameter services and subscriptions; ``spin_until_future_complete`` leaks a task
per call in rclpy 7.1 (calls get slower and slower), so waiting is a ``spin_once`` loop.
"""
from __future__ import annotations

import math
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import rclpy
from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.task import Future

# "Latest value" topics (theta, policy): late joiners and restarted nodes get the last one.
LATCHED = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Per-iteration records (metrics, gradients, trajectories): every one, in order.
EVENTS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)
SENSOR = qos_profile_sensor_data
# Robot commands and per-step states on the topic transport: no step may be lost.
ROBOT_STREAM = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)


def internal_publisher(node, message_type, topic: str, qos: QoSProfile):
    """A publisher for one of the graph's own topics (its subscribers use the profile from this
    module that it was made for), created without rclpy's default QoS event handlers (incompatible
    QoS, incompatible type).  rclpy makes each such handler a waitable that every spin of the node's
    executor adds to its wait set in Python: two per publisher, ~6 us each per spin, and the
    learning side has a publisher per theta entry (``metrics/theta/*``).  One spin of the learning
    container's executor (discrete_3s2a): best of 5, 0.35 ms without them against 0.62 ms with
    them (``bench/results/ros_overhead_cpu/``).  A subscriber with an incompatible profile (a
    user's tool) is still told on its own side: rclpy's and rclcpp's subscriptions log it by
    default.  The robot side's topics keep rclpy's defaults."""
    from rclpy.event_handler import PublisherEventCallbacks
    return node.create_publisher(message_type, topic, qos,
                                 event_callbacks=PublisherEventCallbacks(use_default_callbacks=False))


class LogThrottle:
    """Logs through ``log`` at most once per ``period_s``; the lines it holds back are counted and
    the count goes with the next line.  For callbacks that may fire at a robot's message rate:
    rclpy's own ``throttle_duration_sec`` is applied only after rclpy has inspected the caller's
    frame, which costs 1.5-5 ms per call here (``inspect.getmodule`` scans every loaded module,
    ~1 300 once torch is imported), so a held-back line would still cost that much."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self.next_at = 0.0
        self.held_back = 0

    def __call__(self, log: Callable[[str], Any], message: str) -> bool:
        """True when it was logged."""
        now = time.monotonic()
        if now < self.next_at:
            self.held_back += 1
            return False
        if self.held_back:
            message += f' ({self.held_back} more like it since the last such line)'
        self.held_back, self.next_at = 0, now + self.period_s
        log(message)
        return True


class ShutdownRequested(Exception):
    """The context was shut down (Ctrl-C, SIGTERM) while a node was waiting."""


# --- parameters --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter: default, description, range or choices, read-only flag."""
    name: str
    default: Any
    description: str
    low: Optional[float] = None
    high: Optional[float] = None
    choices: Optional[Sequence[str]] = None
    read_only: bool = False
    allow_empty: bool = True

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(description=self.description, read_only=self.read_only)
        if self.choices:
            descriptor.additional_constraints = f'one of {list(self.choices)}'
        if isinstance(self.default, bool):
            return descriptor
        if isinstance(self.default, int) and (self.low is not None or self.high is not None):
            descriptor.integer_range = [IntegerRange(
                from_value=int(self.low if self.low is not None else -2 ** 31),
                to_value=int(self.high if self.high is not None else 2 ** 31 - 1), step=1)]
        elif isinstance(self.default, float) and (self.low is not None or self.high is not None):
            # step=0.0: a continuous range (a non-zero step rejects off-grid values)
            descriptor.floating_point_range = [FloatingPointRange(
                from_value=float(self.low if self.low is not None else -1e300),
                to_value=float(self.high if self.high is not None else 1e300), step=0.0)]
        return descriptor

    def check(self, value: Any) -> Optional[str]:
        """None if ``value`` is acceptable, else the reason it is not."""
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                return f'{self.name} = {value!r}: expected true or false'
            return None
        if isinstance(self.default, (int, float)) and not isinstance(self.default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f'{self.name} = {value!r}: expected a number'
            if isinstance(self.default, int) and not isinstance(value, int):
                return f'{self.name} = {value!r}: expected an integer'
            if not math.isfinite(value):
                return f'{self.name} = {value!r}: expected a finite number'
            if self.low is not None and value < self.low or self.high is not None and value > self.high:
                return f'{self.name} = {value!r}: expected a value in [{self.low}, {self.high}]'
            return None
        if isinstance(self.default, str):
            if not isinstance(value, str):
                return f'{self.name} = {value!r}: expected a string'
            if self.choices and value not in self.choices:
                return f'{self.name} = {value!r}: expected one of {list(self.choices)}'
            if not self.allow_empty and not value:
                return f'{self.name} is empty: expected a non-empty string'
            return None
        if isinstance(self.default, list):
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
                return f'{self.name} = {value!r}: expected a list of non-empty strings'
            if len(set(value)) != len(value):
                return f'{self.name} = {value!r}: expected distinct names'
        return None


class DeclaredParameters:
    """Declares a node's parameters, validates every change (startup overrides included)
    and rejects bad ones with a reason; values are read where they are used, so an accepted
    change takes effect on the node's next step.

    ``extra_check(name, value, pending)`` may add cross-parameter rules (``pending`` holds
    the values as they would be after the change)."""

    def __init__(self, node, specs: Sequence[ParameterSpec] = (),
                 extra_check: Optional[Callable[[str, Any, dict], Optional[str]]] = None):
        self.node = node
        self.specs: dict[str, ParameterSpec] = {}
        self.extra_check = extra_check
        self.declare(specs)
        node.add_on_set_parameters_callback(self.on_set_parameters_callback)

    def declare(self, specs: Sequence[ParameterSpec]) -> None:
        """Declare more parameters (e.g. those whose defaults come from the problem file);
        startup values (params file, -p overrides) are checked like later changes."""
        for spec in specs:
            default = Parameter.Type.STRING_ARRAY if isinstance(spec.default, list) and not spec.default \
                else spec.default
            self.specs[spec.name] = spec
            self.node.declare_parameter(spec.name, default, spec.descriptor())
        values = self.values()
        errors = [self._reason(spec.name, values[spec.name], values) for spec in specs if spec.name in values]
        errors = [e for e in errors if e]
        if errors:
            raise ValueError('invalid parameters: ' + '; '.join(errors))

    def values(self) -> dict:
        return {name: self[name] for name in self.specs if self.node.has_parameter(name)}

    def __getitem__(self, name: str):
        try:
            return self.node.get_parameter(name).value
        except ParameterUninitializedException:      # an empty list default, declared by its type: not set
            return list(self.specs[name].default)

    def _reason(self, name: str, value: Any, pending: dict) -> Optional[str]:
        spec = self.specs.get(name)
        if spec is None:
            return None       # use_sim_time and other parameters rclpy declares itself
        reason = spec.check(value)
        if reason is None and self.extra_check is not None:
            reason = self.extra_check(name, value, pending)
        return reason

    def on_set_parameters_callback(self, parameters: list[Parameter]) -> SetParametersResult:
        pending = self.values()
        pending.update({p.name: p.value for p in parameters})
        for parameter in parameters:
            reason = self._reason(parameter.name, parameter.value, pending)
            if reason is not None:
                self.node.get_logger().warning(f'rejected parameter change: {reason}')
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)


# --- problems ------------------------------------------------------------------------------------------
def load_problem(name: str):
    """Load a problem by shipped name or path (the same resolution as the CLI)."""
    from ..core.config import builtin_config
    from ..core.problems import load_problem as load
    return load(builtin_config(name))


def problem_outer_defaults(problem) -> dict:
    """The problem file's ``outer:`` section without per-method entries."""
    values = dict(problem.outer_defaults)
    values.pop('methods', None)
    return values


# --- waiting -------------------------------------------------------------------------------------------
class Silence:
    """The deadline of a wait for an answer: ``timeout_s`` after the wait began, or after the
    last sign of life of the one answering (``heard()``: the monotonic time of its last feedback,
    or None) -- a server that says it is still working is not given up on."""

    def __init__(self, timeout_s: Optional[float], what: str, heard: Optional[Callable[[], Optional[float]]] = None):
        self.timeout_s, self.what, self.heard = timeout_s, what, heard
        self.started = time.monotonic()

    def passed(self) -> bool:
        """Whether the deadline has passed."""
        if self.timeout_s is None or self.timeout_s <= 0:
            return False
        last = self.heard() if self.heard is not None else None
        return time.monotonic() >= max(self.started, last or self.started) + self.timeout_s

    def check(self) -> None:
        """TimeoutError once the deadline has passed."""
        if self.passed():
            silent = ' and no feedback' if self.heard is not None else ''
            raise TimeoutError(f'{self.what}: no answer{silent} within {self.timeout_s:g} s')


def wait_for(executor: SingleThreadedExecutor, future: Future, timeout_s: Optional[float],
             what: str, heard: Optional[Callable[[], Optional[float]]] = None) -> Any:
    """Spin until ``future`` is done; returns its result.  Raises TimeoutError naming
    ``what`` (``timeout_s`` without an answer, or since the last feedback: ``Silence``), or
    ShutdownRequested when the context goes down."""
    silence = Silence(timeout_s, what, heard)
    while not future.done():
        if not executor.context.ok():
            raise ShutdownRequested(what)
        silence.check()
        spin_once(executor)
    return future.result()


def spin_once(executor) -> None:
    """One ``executor.spin_once``, always with the timeout ``SIGNAL_CHECK_S``: every wait of this
    package spins this way and checks its own deadline between spins (overshooting it by at most
    ``SIGNAL_CHECK_S``).  rclpy keeps the executor's generator of ready callbacks only while the
    arguments of ``spin_once`` stay the same: a timeout that changes from call to call (a
    remaining time) makes every call build a new wait set and timer and drop the callbacks
    the last wait found ready, so each must be found again by a wait of its own."""
    executor.spin_once(timeout_sec=SIGNAL_CHECK_S)


class Backoff:
    """When to ask a peer again whose answer may have been lost: due ``first_s`` after it is made,
    then at doubling intervals of at most ``max_s``."""

    def __init__(self, first_s: float, max_s: float):
        self.interval_s, self.max_s = first_s, max_s
        self.due_at = time.monotonic() + first_s

    def due(self) -> bool:
        """True when the next ask is due (the one after it is then scheduled)."""
        now = time.monotonic()
        if now < self.due_at:
            return False
        self.interval_s = min(2 * self.interval_s, self.max_s)
        self.due_at = now + self.interval_s
        return True


UNKNOWN_NODE = '_NODE_NAME_UNKNOWN_'
"""rmw's node name for an endpoint whose node's name has not reached this participant yet (DDS
discovers a writer, and delivers its data, before its participant's node list arrives)."""


def command_publishers(node, topic: str) -> list[str]:
    """Fully qualified names of the nodes publishing on ``topic``, one entry per publisher (a
    name twice: two publishers claim it), as the ROS graph of ``node`` sees them now."""
    return [f'{info.node_namespace.rstrip("/")}/{info.node_name}' for info in node.get_publishers_info_by_topic(topic)]


class PublisherNames:
    """``command_publishers(node, topic)``, kept between calls: re-read from the ROS graph only
    when the number of publishers on ``topic`` changes (a cheap count, the graph-change signal
    checked at every call) or the names are older than ``refresh_s``, or when asked ``fresh``.
    The full query builds an info object per publisher (~0.15 ms, 7 % of a 500 Hz period); the
    count is a fraction of that.  A publisher that appears is seen at the first call after it
    reaches the ROS graph, as before; one that replaces another in between (the count the
    same) within ``refresh_s``."""

    def __init__(self, node, topic: str, refresh_s: float = 1.0):
        self.node, self.topic, self.refresh_s = node, topic, refresh_s
        self.count: Optional[int] = None
        self.read_at = 0.0
        self.names: list[str] = []
        self.reads = 0
        """Full queries of the graph so far."""

    def __call__(self, fresh: bool = False) -> list[str]:
        count = self.node.count_publishers(self.topic)
        now = time.monotonic()
        if fresh or count != self.count or now - self.read_at > self.refresh_s:
            self.names = command_publishers(self.node, self.topic)
            # a count the names disagree with (the graph changed between the two reads) is not kept,
            # nor one with a name still unknown (it arrives without changing the count)
            kept = count == len(self.names) and not any(name.endswith(UNKNOWN_NODE) for name in self.names)
            self.count, self.read_at = (count if kept else None), now
            self.reads += 1
        return self.names


class BackgroundWork:
    """Runs computations one at a time, in order, in a worker thread of its own; ``await
    work.start(fn)`` (or ``work.run_long(fn, heartbeat)``) from an async callback lets the executor
    go on serving (cancel requests, parameters) meanwhile.  ``work.start(fn)`` returns the rclpy
    Future of the result (several callbacks may await it).  The thread is started at the first computation and then kept: a
    new thread per computation cost the executor's thread ~1 ms in ``Thread.start`` on a loaded
    2-core machine (the robot container's evaluator, once per outer iteration).  The hand-back
    costs a few milliseconds (GIL switch interval), so use it for long work."""

    IDLE_S = 30.0
    """A worker idle this long ends (a later computation starts another)."""
    INLINE_BELOW_S = 0.02
    """``run_long``: a computation runs on the executor's thread while the last one took less
    (a thread hand-off and feedback would cost more than they tell: tabular, LQR)."""
    HEARTBEAT_S = 2.0
    """``run_long``: the period of its ``heartbeat`` while a computation runs in the worker."""

    def __init__(self, node):
        self.node = node
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: Optional[threading.Thread] = None
        self.lock = threading.Lock()
        self.queued = 0                     # computations started and not finished
        self.last_s: Optional[float] = None  # how long the last computation took

    def quick(self) -> bool:
        """Whether the next computation may run inline: the last took under ``INLINE_BELOW_S`` and
        none is queued (it would overtake it)."""
        return self.last_s is not None and self.last_s < self.INLINE_BELOW_S and self.queued == 0

    def timed(self, function: Callable[[], Any]) -> Callable[[], Any]:
        def call():
            started = time.perf_counter()
            try:
                return function()
            finally:
                self.last_s = time.perf_counter() - started
        return call

    async def run_long(self, function: Callable[[], Any], heartbeat: Optional[Callable[[], None]] = None) -> Any:
        """``function()`` for an action whose computations may be long (an exact inner solve or
        sensitivity of a robot: minutes; of a tabular problem: microseconds): inline while they
        are quick (``quick``), else in the worker, with ``heartbeat()`` (the action's feedback)
        every ``HEARTBEAT_S`` meanwhile, so that the executor goes on serving -- goals, cancels,
        parameters -- and a client that waits counts the silence, not the work (``Silence``).
        The first computation of a node runs in the worker: its cost is not known yet."""
        if self.quick():
            return self.timed(function)()
        with self.heartbeat(heartbeat):
            return await self.start(function)

    @contextmanager
    def heartbeat(self, heartbeat: Optional[Callable[[], None]]):
        """``heartbeat()`` every ``HEARTBEAT_S`` on the node's executor while the block runs (an
        awaited computation's sign of life to a client that counts silence; None: nothing)."""
        timer = self.node.create_timer(self.HEARTBEAT_S, heartbeat) if heartbeat is not None else None
        try:
            yield
        finally:
            if timer is not None:
                self.node.destroy_timer(timer)

    def start(self, function: Callable[[], Any]) -> Future:
        future = Future()
        with self.lock:
            self.queued += 1
            self.queue.put((self.timed(function), future, self.node.executor))
            if self.thread is None:
                self.thread = threading.Thread(target=self._work, daemon=True, name=f'{self.node.get_name()}-work')
                self.thread.start()
        return future

    def _work(self) -> None:
        while True:
            try:
                function, future, executor = self.queue.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self.lock:
                    if self.queue.empty():
                        self.thread = None
                        return
                continue
            try:
                future.set_result(function())
            except BaseException as err:      # re-raised in the awaiting callback
                future.set_exception(err)
            with self.lock:
                self.queued -= 1
            if executor is not None:
                executor.wake()
            del function, future, executor     # nothing of a finished computation kept while idle


# --- actions -------------------------------------------------------------------------------------------
def goal_validator(node, read_goal: Callable[[Any], Any], action: str):
    """A goal callback that rejects a goal when ``read_goal`` raises MessageValidationError,
    logging the reason (the action protocol itself carries no reason for a rejection)."""
    from rclpy.action import GoalResponse
    from .conversions import MessageValidationError

    def goal_callback(goal):
        try:
            read_goal(goal)
        except MessageValidationError as err:
            node.get_logger().error(f'rejected {action} goal: {err}')
            return GoalResponse.REJECT
        except Exception as err:     # noqa: BLE001 -- a goal callback that raises ends the node
            node.get_logger().error(f'rejected {action} goal: unreadable ({type(err).__name__}: {err})')
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT
    return goal_callback


def accept_cancel(goal_handle):
    """Cancel callback of long actions: always accept; the work checks between stages."""
    from rclpy.action import CancelResponse
    return CancelResponse.ACCEPT


# --- main ----------------------------------------------------------------------------------------------
def run_node(make_node: Callable[[], Any], args=None,
             body: Optional[Callable[[Any, SingleThreadedExecutor], int]] = None,
             own_signals: bool = False) -> int:
    """Init, build the node, spin one SingleThreadedExecutor (or run ``body(node, executor)``,
    which spins it itself), always shut down; the exit status is returned (and the process
    ends right after, see ``exit_now``).

    ``own_signals``: SIGINT and SIGTERM raise KeyboardInterrupt here instead of rclpy shutting
    the context down at once, so the node's ``before_exit()`` still runs with a live context
    (the hardware bridge's last zero command)."""
    return run_nodes([make_node], args, own_signals=own_signals,
                     body=None if body is None else (lambda nodes, executor: body(nodes[0], executor)))


def run_nodes(makers: Sequence[Callable[[], Any]], args=None,
              body: Optional[Callable[[list, SingleThreadedExecutor], int]] = None,
              own_signals: bool = False) -> int:
    """``run_node`` for several nodes in one process on one executor (``nodes/container.py``):
    built in order, spun together (or by ``body(nodes, executor)``), each node's
    ``before_exit()`` run on a signal, all destroyed in reverse order."""
    if own_signals:
        import signal
        from rclpy.signals import SignalHandlerOptions
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)

        def interrupt(signum, frame):
            raise KeyboardInterrupt(signal.Signals(signum).name)
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, interrupt)
    else:
        import signal
        # rclpy's handler shuts the context down, then calls the handler it replaced.  Python's
        # default one would also raise KeyboardInterrupt at whatever line the main thread is on --
        # possibly while the node is already handling the shutdown (the optimizer writing its
        # results) -- so it is replaced by one that only takes note: the context going down is
        # the one way these nodes learn that they must stop.
        signal.signal(signal.SIGINT, _note_signal)
        rclpy.init(args=args)
    _dump_stacks_on_sigusr1()
    nodes: list = []
    status = 0
    try:
        for make_node in makers:
            nodes.append(make_node())
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
            node.get_logger().info(READY_LOG)     # built: a signal from now on meets the executor's loop
        if body is None:
            # Bounded waits.  Python runs a signal handler only between bytecodes, never inside the
            # executor's wait, so a node with nothing to wake it (an unconfigured bridge has no
            # timer) would not see its own SIGINT handler run; and rclpy's handler may wake the
            # wait a moment before it takes the context down, so one unbounded wait more can
            # last forever.
            while own_signals or executor.context.ok():
                spin_once(executor)
        else:
            status = body(nodes, executor)
    except (KeyboardInterrupt, ExternalShutdownException, ShutdownRequested):
        status = 130 if body is not None else 0
        for node in nodes:
            if hasattr(node, 'before_exit') and rclpy.ok():
                try:
                    node.before_exit()
                except Exception as err:      # noqa: BLE001 -- exiting anyway; say why it failed
                    _log_fatal(node, err)
    except ValueError as err:           # invalid parameters or problem file: say why, exit 2
        _log_fatal(nodes[-1] if len(nodes) == len(makers) else None, err)
        status = 2
    except _rclpy.RCLError:
        # SIGINT between the executor's context check and its wait set: rclpy raises "context is
        # not valid" instead of ExternalShutdownException -- a clean shutdown all the same
        if rclpy.ok():
            raise
        status = 130 if body is not None else 0
    finally:
        for node in reversed(nodes):
            node.destroy_node()
        rclpy.try_shutdown()
    exit_now(status)
    return status


READY_LOG = 'ready'
"""What every node logs once it is built and added to its executor (tests and operators wait on it)."""
SIGNAL_CHECK_S = 0.1
"""Longest wait of a node's executor before it looks again for a signal or a shut-down context."""


def _dump_stacks_on_sigusr1() -> None:
    """``kill -USR1 PID`` writes every thread's Python stack to the node's stderr (its log),
    at once, even while the main thread is stuck in C code: for a node that stops answering."""
    import faulthandler
    import signal
    import sys
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True, chain=False)


def _note_signal(signum, frame) -> None:
    """SIGINT after rclpy's handler: nothing more to do (see ``run_node``)."""


def exit_now(status: int) -> None:
    """End the node process once its node is destroyed and rclpy is shut down.

    The interpreter's own teardown (torch and friends) is slow, slower still when a whole graph
    stops at once on few cores, and may outlast ros2 launch's SIGINT grace period, after which it
    escalates to SIGTERM.  Everything that matters is released explicitly before."""
    import os
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _log_fatal(node, err: Exception) -> None:
    if node is not None:
        node.get_logger().fatal(str(err))
    else:
        import sys
        print(f'[fatal] {err}', file=sys.stderr, flush=True)


# --- the parameters every problem node has -------------------------------------------------------------
PROBLEM = ParameterSpec('problem', 'discrete_3s2a',
                        'problem file: a shipped name (discrete_3s2a, lqr, ...) or a path to a YAML file; '
                        'read at startup', read_only=True, allow_empty=False)
SEED = ParameterSpec('seed', 0, 'random seed of this node\'s sampling (read at startup)', low=0,
                     high=2 ** 31 - 1, read_only=True)


def outer_config_defaults(problem) -> dict:
    """The outer-loop configuration the in-process core would use for method 'bilevel' on
    this problem (its defaults merged with the problem file's ``outer:`` section)."""
    from dataclasses import asdict
    from ..core.experiments import make_run
    return asdict(make_run(problem, 'bilevel', seed=0).config)
