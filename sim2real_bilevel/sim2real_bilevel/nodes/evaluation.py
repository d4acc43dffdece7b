"""The sim-only evaluator over ROS: the robot_emulator (which holds the hidden real model) serves
``~/evaluate`` (EvaluatePolicy); the outer_optimizer's ``evaluator`` parameter names that service
and ``EvaluatorClient`` is the core's ``Evaluator`` (``phi -> {'normalized_return',
'real_return'}``) over it.

A real robot has no hidden model: on hardware the parameter is empty, nothing is asked and the
records' normalised and real return are NaN (the estimate from the real episodes and its
interval are there either way).  A configured evaluator that is absent or does not answer leaves
them NaN for that record with a logged reason, and the run goes on: an absent one costs
``evaluator_timeout_s`` per record; one that is there may go ``evaluator_answer_timeout_s``
without a word (an exact evaluation may take minutes: the first one of a URDF robot solves the
oracle policy; the emulator computes it off its executor, so its robot keeps being served
meanwhile, once per policy however often it is asked, and reports on ``~/evaluate/progress``
every ``BackgroundWork.HEARTBEAT_S`` while it works, so the client counts the silence, not the work)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.task import Future
from sim2real_bilevel_interfaces.srv import EvaluatePolicy

from . import conversions
from .runtime import Backoff, BackgroundWork, ShutdownRequested, Silence, spin_once

NOT_EVALUATED = {'normalized_return': math.nan, 'real_return': math.nan}
def progress_topic(service: str) -> str:
    """The progress topic of the evaluation service ``service`` (as named, relative or not)."""
    return f'{service.rstrip("/")}/progress'


class EvaluationServer:
    """``~/evaluate`` on ``node``: the exact normalised and real return of a policy from the
    hidden real model of ``make_problem()`` (the robot_emulator, sim-only).

    An exact evaluation may take long (the pendulum: its oracle policy and tens of fixed-seed
    episodes, ~48 s on a loaded 2-core machine), so it never runs on the executor: it runs in
    a worker thread (one evaluation at a time) on a problem instance of its own -- made there on
    the first request, so the node's real episodes and robot stay untouched -- and the service
    callback awaits it while the node goes on serving resets, episode goals and its timers.
    The same policy asked again (a client's retry, or the same phi once more) joins the
    evaluation in flight or gets the kept answer: it is computed once.  While a policy is being
    evaluated (or waits for the one before it), ``~/evaluate/progress`` (diagnostic_msgs/
    DiagnosticStatus: which policy version, for how long) says so every
    ``BackgroundWork.HEARTBEAT_S`` (``EvaluatorClient`` waits for silence, not for the whole evaluation: a URDF
    robot's first one solves its oracle policy, ~12-20 min on a loaded 2-core machine for the
    iiwa).  ``delay_s()`` (tests only) is added to every evaluation's duration."""

    KEPT = 16
    """Answers kept for policies asked again (the newest ones)."""
    SLOW_S = 1.0
    """An evaluation this long or longer is logged (start and result); faster ones are summed up
    (``QuietEvaluations``) every ``SUMMARY_S``, one line each at DEBUG level."""
    SUMMARY_S = 10.0

    def __init__(self, node, phi_size: int, make_problem: Callable[[], Any],
                 delay_s: Callable[[], float] = lambda: 0.0, child_problem: Optional[str] = None):
        self.node, self.phi_size, self.make_problem, self.delay_s = node, phi_size, make_problem, delay_s
        self.work = BackgroundWork(node)
        self.lock = threading.Lock()        # one evaluation at a time, the problem made once
        # made on the first request; with ``child_problem`` (a problem file) a ChildEvaluator, whose
        # process starts on its first call
        self.evaluate: Optional[Callable[[np.ndarray], dict]] = \
            ChildEvaluator(child_problem) if child_problem is not None else None
        self.in_flight: dict[bytes, Future] = {}
        self.kept: OrderedDict[bytes, dict] = OrderedDict()
        self.computed = 0
        self.evaluating: Optional[int] = None
        """The policy version the worker is computing now (None: none yet)."""
        self.last_duration_s = 0.0
        self.quiet = QuietEvaluations(node.get_logger(), self.SUMMARY_S)
        # its own callback group: an awaiting callback holds its group, and the node's default
        # group serves everything else; reentrant: a retry is taken while the first one waits
        self.service = node.create_service(EvaluatePolicy, '~/evaluate', self.callback,
                                           callback_group=ReentrantCallbackGroup())
        self.progress = node.create_publisher(DiagnosticStatus, progress_topic('~/evaluate'), 10)

    async def callback(self, request, response):
        try:
            phi, version, _ = conversions.policy_from_msg(request.policy, self.phi_size)
        except conversions.MessageValidationError as err:
            response.success, response.message = False, str(err)
            self.node.get_logger().error(f'evaluate: refused: {err}')
            return response
        key = phi.tobytes()
        values = self.kept.get(key)
        if values is not None:
            self.kept.move_to_end(key)
            self.node.get_logger().info(f'evaluate: policy version {version} was evaluated before: answered again')
        else:
            future = self.in_flight.get(key)
            progress = None                 # the request that starts an evaluation reports its progress
            if future is None:
                future = self.in_flight[key] = self.work.start(lambda: self._compute(phi, version))
                asked = time.monotonic()

                def progress():
                    self._tell_progress(version, asked)
            else:
                self.node.get_logger().info(f'evaluate: policy version {version} is being evaluated: this request '
                                            'waits for that evaluation')
            try:
                with self.work.heartbeat(progress):
                    values = await future
            except Exception as err:     # noqa: BLE001 -- a failed evaluation is refused with its reason
                response.success, response.message = False, f'evaluation failed: {type(err).__name__}: {err}'
                self.node.get_logger().error(f'evaluate: policy version {version}: {response.message}')
                return response
            finally:
                if self.in_flight.get(key) is future:
                    del self.in_flight[key]
            if key not in self.kept:
                self.kept[key] = values
                while len(self.kept) > self.KEPT:
                    self.kept.popitem(last=False)
        response.success = True
        response.normalized_return = float(values['normalized_return'])
        response.real_return = float(values['real_return'])
        return response

    def _tell_progress(self, version: int, asked: float) -> None:
        """One progress message of the evaluation of policy ``version``, asked for at ``asked``."""
        elapsed = time.monotonic() - asked
        waiting = ', waiting for the evaluation before it' if self.evaluating != version else ''
        self.progress.publish(DiagnosticStatus(
            level=DiagnosticStatus.OK, name=f'{self.node.get_fully_qualified_name()}/evaluate',
            message=f'evaluating policy version {version}: {elapsed:.0f} s so far{waiting}',
            values=[KeyValue(key='policy_version', value=str(version)),
                    KeyValue(key='elapsed_s', value=f'{elapsed:.1f}'),
                    KeyValue(key='evaluations_asked', value=str(len(self.in_flight)))]))

    def _compute(self, phi: np.ndarray, version: int) -> dict:
        """In the worker thread."""
        with self.lock:
            self.evaluating = version
            self.computed += 1
            # the first evaluation, and each one after a slow one, logs its start and result: a
            # fast sim-only loop evaluates a policy every few milliseconds, and rclpy spends
            # milliseconds of this process's CPU per log call (runtime.LogThrottle says why)
            loud = self.computed == 1 or self.last_duration_s >= self.SLOW_S
            self._log(loud, f'evaluate: computing policy version {version} (evaluation {self.computed} of this node)')
            started = time.monotonic()
            if self.evaluate is None:
                from ..core.evaluation import oracle_evaluator
                self.evaluate = oracle_evaluator(self.make_problem())
            delay = self.delay_s()
            if delay > 0:
                time.sleep(delay)
            values = self.evaluate(phi)
            self.last_duration_s = time.monotonic() - started
            loud = loud or self.last_duration_s >= self.SLOW_S
            self._log(loud, f'evaluate: policy version {version}: normalised return '
                            f'{values["normalized_return"]:.6g} ({self.last_duration_s:.1f} s)')
            if not loud:
                self.quiet.add(version, values['normalized_return'])
            return values

    def destroy(self) -> None:
        """Ends the child process, if any (an evaluation in flight there is abandoned)."""
        if isinstance(self.evaluate, ChildEvaluator):
            self.evaluate.close()

    def _log(self, loud: bool, message: str) -> None:
        # two call sites: rclpy refuses one call site logging at two severities
        if loud:
            self.node.get_logger().info(message)
        else:
            self.node.get_logger().debug(message)


class ChildEvaluator:
    """``oracle_evaluator(load_problem(path))`` in a child process of its own (started on first use,
    one evaluation at a time), called like it: ``phi -> values``.

    For the real-time robot (``mode: realtime``): an exact evaluation is reporting only, yet the
    pendulum's first one computes the oracle policy, ~80 s of torch in the emulator's interpreter,
    and its physics timer then missed its periods: the bridge aborted the first episodes of every
    ``robot_mode:=realtime`` run on stale states (2-3 of the first goals, 100-117 ms old against
    the 100 ms limit).  In a child process the evaluation holds no lock the robot's timer needs.

    The child is ``python -m sim2real_bilevel.nodes.evaluation PROBLEM``: one JSON line in (phi),
    one out (the values, or the error); it loads the problem file itself, so its answers are the
    in-process ones (fixed seeds; the same floats where torch runs one thread in both, as in the
    tests: the child always does).  ``close`` (the node destroyed) kills it; a node killed outright
    closes the child's stdin, and the child ends once its evaluation in flight is done.  Its stderr
    is the node's."""

    def __init__(self, problem_path: str):
        self.problem_path = str(problem_path)
        self.process: Optional[subprocess.Popen] = None

    def __call__(self, phi: np.ndarray) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen([sys.executable, '-m', __name__, self.problem_path],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.process.stdin.write(json.dumps([float(v) for v in np.asarray(phi, dtype=np.float64).ravel()]) + '\n')
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f'the evaluation process for {self.problem_path} ended (status '
                               f'{self.process.wait()}; its output is in this node\'s log)')
        answer = json.loads(line)
        if 'error' in answer:
            raise RuntimeError(f'in the evaluation process: {answer["error"]}')
        return answer

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()               # an evaluation in flight may last a minute: not waited for
            self.process.wait()
        self.process = None


def child_main(argv: list[str]) -> int:
    """The evaluation process: ``oracle_evaluator`` of the problem file ``argv[0]``, made on the
    first request; each stdin line a JSON list (phi), each answer a JSON object on stdout."""
    import torch
    torch.set_num_threads(1)
    from ..core.evaluation import oracle_evaluator
    from ..core.problems import load_problem
    evaluate = None
    for line in sys.stdin:
        try:
            if evaluate is None:
                evaluate = oracle_evaluator(load_problem(argv[0]))
            values = evaluate(np.asarray(json.loads(line), dtype=np.float64))
            answer = {key: float(value) for key, value in values.items()}
        except Exception as err:      # noqa: BLE001 -- the parent refuses that evaluation with the reason
            answer = {'error': f'{type(err).__name__}: {err}'}
        sys.stdout.write(json.dumps(answer) + '\n')
        sys.stdout.flush()
    return 0


class QuietEvaluations:
    """The evaluations an ``EvaluationServer`` did not log one by one, summed up in one INFO line at
    most every ``period_s``: how many, which versions, the newest normalised return."""

    def __init__(self, logger, period_s: float):
        self.logger, self.period_s = logger, period_s
        self.count, self.since, self.first, self.last, self.value = 0, 0.0, 0, 0, math.nan

    def add(self, version: int, normalized_return: float) -> None:
        now = time.monotonic()
        if self.count == 0:
            self.since, self.first = now, version
        self.count += 1
        self.last, self.value = version, normalized_return
        if now - self.since >= self.period_s:
            self.logger.info(f'evaluate: {self.count} policies in the last {now - self.since:.0f} s (versions '
                             f'{self.first}-{self.last}); policy version {self.last}: normalised return '
                             f'{self.value:.6g}')
            self.count = 0


class EvaluatorClient:
    """``phi -> {'normalized_return', 'real_return'}`` by the EvaluatePolicy service ``name``.

    Each request waits at most ``timeout_s`` for the service to be there and at most
    ``answer_timeout_s`` without an answer or a progress message from the server (its
    ``<name>/progress``: an evaluation in progress, however long, is waited for; a frozen server
    is not), asking again meanwhile after 1 s and at doubling intervals (a lost answer;
    ``Evaluation._ask_again``); progress is logged every ``PROGRESS_LOG_S`` while waited for;
    a server that leaves the graph meanwhile, or an answer that does not come, is asked again up to
    ``retries`` times (the server computes a policy once, a request asked again joins it).  After that, or
    when the service is absent or refuses, the values are NaN and the reason is logged (once
    per distinct reason in a row).  ``policy_message(phi)`` builds the request's policy;
    ``executor()`` is the node's executor (spun while waiting).

    ``client(phi)`` waits for the answer; ``client.submit(phi)`` sends the request and returns
    at once (an ``Evaluation``): the answer arrives while the caller spins the executor for
    other work, and ``result()`` waits only for what is left of it (the outer loop's pipelined
    records, ``MethodRun.record``)."""

    PROGRESS_LOG_S = 60.0

    def __init__(self, node, name: str, policy_message, executor, timeout_s: float = 5.0, retries: int = 2,
                 answer_timeout_s: float = 300.0):
        self.node, self.name = node, name
        self.client = node.create_client(EvaluatePolicy, name)
        self.heard_at: Optional[float] = None
        """When the server last said it is evaluating (``<name>/progress``)."""
        self.progress = ''
        self.progress_logged_at = -math.inf
        self.subscription = node.create_subscription(DiagnosticStatus, progress_topic(name), self._heard, 10)
        self.policy_message, self.executor = policy_message, executor
        self.timeout_s, self.retries, self.answer_timeout_s = timeout_s, retries, answer_timeout_s
        self.failures = 0
        self.last_reason = ''

    def __call__(self, phi: np.ndarray) -> dict:
        if not self.executor().context.ok():
            return dict(NOT_EVALUATED)     # going down (results written on a signal): nothing to ask
        try:
            return self.submit(phi).result()
        except ShutdownRequested:
            return dict(NOT_EVALUATED)     # the loop's own checks end the run as interrupted

    def submit(self, phi: np.ndarray) -> 'Evaluation':
        """The request for ``phi``, sent now (once the service is there); ``ShutdownRequested`` if
        the node is going down."""
        if not self.executor().context.ok():
            raise ShutdownRequested('evaluator')
        return Evaluation(self, EvaluatePolicy.Request(policy=self.policy_message(phi)))

    def _heard(self, status: DiagnosticStatus) -> None:
        self.heard_at, self.progress = time.monotonic(), status.message

    def log_progress(self) -> None:
        """The server's newest progress, at most every ``PROGRESS_LOG_S``, while an answer is awaited."""
        if self.heard_at is not None and self.heard_at - self.progress_logged_at >= self.PROGRESS_LOG_S:
            self.progress_logged_at = self.heard_at
            self.node.get_logger().info(f'evaluator {self.client.srv_name}: {self.progress}')

    def _spin(self, executor) -> None:
        if not executor.context.ok():
            raise ShutdownRequested('evaluator')
        spin_once(executor)

    def _failed(self, reason: str) -> dict:
        self.failures += 1
        if reason != self.last_reason:
            self.node.get_logger().warning(f'{reason}: the normalised return of this record is NaN (the run goes on)')
            self.last_reason = reason
        return dict(NOT_EVALUATED)


class Evaluation:
    """One request of an ``EvaluatorClient``, sent when made.  ``done()``: its values are there
    without a wait; ``result()``: the values (waiting, asking again as the client says; NaN after
    a failure, logged), ``ShutdownRequested`` if the node goes down meanwhile."""

    ASK_AGAIN_FIRST_S = 1.0
    ASK_AGAIN_MAX_S = 30.0

    def __init__(self, client: EvaluatorClient, request):
        self.client, self.request = client, request
        self.pending: list[Future] = []
        """This attempt's requests: the first, then the ones asked again (``_ask_again``)."""
        self.silence: Optional[Silence] = None
        """This attempt's wait for an answer: ``answer_timeout_s`` since the request or the server's
        last progress message (``_send``)."""
        self.ask_again: Optional[Backoff] = None
        """When to ask again (``_ask_again``), fresh at each attempt (``_send``)."""
        self.attempts = 0
        self.values: Optional[dict] = None
        try:
            self._send()
        except TimeoutError as err:
            self.values = client._failed(str(err))

    def _send(self) -> None:
        client = self.client
        executor = client.executor()
        deadline = time.monotonic() + client.timeout_s
        while not client.client.service_is_ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f'evaluator {client.client.srv_name} is not available '
                                   f'(waited {client.timeout_s:g} s)')
            client._spin(executor)
        self.attempts += 1
        self.pending = [client.client.call_async(self.request)]
        self.silence = Silence(client.answer_timeout_s, f'evaluator {client.client.srv_name}',
                               heard=lambda: client.heard_at)
        self.ask_again = Backoff(self.ASK_AGAIN_FIRST_S, self.ASK_AGAIN_MAX_S)

    def _ask_again(self) -> None:
        """The same request once more while the answer is awaited, after 1 s, then at doubling
        intervals (at most ``ASK_AGAIN_MAX_S``): an answer sent before DDS has matched the
        server's response writer with this client is dropped by the server ("failed to send
        response"), and without this the caller would wait ``answer_timeout_s`` (300 s) for it.
        The server computes a policy once: a request asked again joins the evaluation in flight
        or gets its kept answer."""
        if self.ask_again.due():
            self.pending.append(self.client.client.call_async(self.request))

    def _answered(self) -> Optional[Future]:
        return next((future for future in self.pending if future.done()), None)

    def _drop_pending(self) -> None:
        for future in self.pending:
            if not future.done():
                self.client.client.remove_pending_request(future)
        self.pending = []

    def done(self) -> bool:
        return self.values is not None or self._answered() is not None

    def result(self) -> dict:
        if self.values is None:
            try:
                self.values = self._answer()
            except TimeoutError as err:
                self.values = self.client._failed(str(err))
        return self.values

    def _answer(self) -> dict:
        client = self.client
        executor = client.executor()
        while True:
            if not self.pending:
                self._send()
            while (self._answered() is None and client.client.service_is_ready()
                   and not self.silence.passed()):
                self._ask_again()
                client._spin(executor)
                client.log_progress()
            answered = self._answered()
            if answered is not None:
                break
            self._drop_pending()
            reason = ('no answer and no progress for {:g} s'.format(client.answer_timeout_s)
                      if client.client.service_is_ready() else 'the server left while evaluating')
            if self.attempts > client.retries:
                raise TimeoutError(f'evaluator {client.client.srv_name}: {reason} ({self.attempts} requests)')
            # a restarting server, or no answer at all: a new attempt
        self._drop_pending()
        response = answered.result()
        if not response.success:
            return client._failed(f'evaluator {client.client.srv_name} refused: {response.message}')
        client.last_reason = ''
        return {'normalized_return': float(response.normalized_return), 'real_return': float(response.real_return)}


if __name__ == '__main__':
    raise SystemExit(child_main(sys.argv[1:]))
