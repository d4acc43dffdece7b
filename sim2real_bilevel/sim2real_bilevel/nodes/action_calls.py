"""Calling actions on peers that may restart or lose messages: the one place for goal timeouts,
re-sends with back-off, and results asked for again.

Why every wait is bounded and lost results are asked for again: a goal sent while its server
restarts is dropped without an answer, and a goal response or result sent before DDS has
matched the server's writer with the client's reader is lost.  Servers keep a finished goal's
result ``RESULT_KEPT_S`` (their ``result_timeout``), so a client whose goal status says
"finished" but whose result did not come asks again (``ResultRequest``).

- ``ActionCaller``: the synchronous caller of a node whose loop spins its own executor
  (outer_optimizer): ``goal_timeout_s`` for acceptance, ``action_timeout_s`` for the result,
  up to ``action_retries`` re-sends in a row after the server is back, with back-off.
- ``call_async``: the same one attempt for an async callback (hardware_bridge forwarding to
  the robot emulator), its waits given by the caller.
- ``wait_for_result``: spin until a goal's result arrives, asking again when lost (also the
  test client's).
- ``serve_action``: an action server that peers in the same process (a container,
  nodes/container.py) may also be handed goals by a direct call: with ``intra_process_actions``
  the ``ActionCaller`` of a node on the same executor calls its goal and execute callbacks
  in-process -- the goal checked and run exactly as one over DDS, its result the same message --
  instead of the two DDS round trips (goal, result) an action takes.  Like rclcpp's intra-process
  communication, such a goal is not seen on the action's status topic; peers in other processes
  use the server over DDS as always.
"""
from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Optional

from rclpy.executors import SingleThreadedExecutor
from rclpy.task import Future

from .runtime import Backoff, ShutdownRequested, Silence, spin_once, wait_for

RESULT_KEPT_S = 10.0
"""How long the action servers keep a finished goal's result (their ``result_timeout``): time for
a client to ask for it again (``wait_for_result``)."""


class ActionFailed(RuntimeError):
    pass


class PeerLost(ActionFailed):
    """A goal that may succeed when sent again: no answer in time, rejected or aborted by a
    peer that may be restarting, or a malformed result."""


class Unsupported(ActionFailed):
    """A service that takes goals as one request (``ActionCaller.call_service``) answered that it
    does not take this kind of request at all (its message starts with ``UNSUPPORTED``): not
    sent again; the caller uses another way."""


UNSUPPORTED = 'unsupported: '


class GoalRejected(PeerLost):
    """The server rejected the goal (its log says why: the action protocol carries no reason)."""


class InProcessEndpoint:
    """What ``serve_action`` keeps for callers in the same process: the action's resolved name
    and the server's goal and execute callbacks."""

    def __init__(self, name: str, goal_callback: Callable, execute_callback: Callable):
        self.name, self.goal_callback, self.execute_callback = name, goal_callback, execute_callback


def serve_action(node, action_type, name: str, execute_callback: Callable, goal_callback: Callable, **options):
    """``rclpy.action.ActionServer`` on ``node`` (``options``: its keyword arguments), which an
    ``ActionCaller`` on the same executor may call in-process (``InProcessEndpoint``)."""
    from rclpy.action import ActionServer
    server = ActionServer(node, action_type, name, execute_callback=execute_callback, goal_callback=goal_callback,
                          **options)
    server.in_process = InProcessEndpoint(node.resolve_topic_name(name), goal_callback, execute_callback)
    return server


def find_in_process_endpoint(executor, node, action_name: str) -> Optional[InProcessEndpoint]:
    """The endpoint of the server of ``action_name`` (resolved as ``node`` resolves it) when a
    node on ``executor`` serves it with ``serve_action``; else None."""
    if executor is None:
        return None
    name = node.resolve_topic_name(action_name)
    return next((waitable.in_process for member in executor.get_nodes() for waitable in member.waitables
                 if getattr(waitable, 'in_process', None) is not None and waitable.in_process.name == name), None)


async def call_in_process_async(endpoint: InProcessEndpoint, goal):
    """From an async callback: ``goal`` handed to a server of this process by a direct call --
    its goal check, then its execute callback (awaited when async) -- as over DDS without the
    goal and result round trips.  Returns the result message; GoalRejected when refused."""
    import inspect
    from rclpy.action import GoalResponse
    if endpoint.goal_callback(goal) != GoalResponse.ACCEPT:
        raise GoalRejected(f'goal rejected by {endpoint.name} (its log says why)')
    result = endpoint.execute_callback(InProcessGoalHandle(goal))
    return await result if inspect.isawaitable(result) else result


def run_until_first_await(outcome) -> tuple:
    """``(result, None)`` when ``outcome`` -- what an execute callback returned: a result, or the
    coroutine of an ``async def`` one -- is done, after running a coroutine up to its first
    ``await`` of something not yet done; else ``(None, coroutine)``, the coroutine to go on as an
    executor task (rclpy's Task resumes a started coroutine the same way it runs a new one).
    An exception the coroutine raises is raised here."""
    import inspect
    if not inspect.iscoroutine(outcome):
        return outcome, None
    try:
        outcome.send(None)
    except StopIteration as finished:
        return finished.value, None
    return None, outcome


class InProcessGoalHandle:
    """The goal handle of a goal handed over in-process: what an execute callback uses of
    rclpy's ServerGoalHandle.  Feedback goes only to a goal's own client, which here only notes
    when it came (``heard``: a sign of life, as over DDS)."""

    def __init__(self, request):
        from action_msgs.msg import GoalStatus
        self.request = request
        self.is_cancel_requested = False
        self.status = GoalStatus.STATUS_EXECUTING
        self._codes = GoalStatus
        self.heard: Optional[float] = None

    def publish_feedback(self, feedback) -> None:
        self.heard = time.monotonic()

    def succeed(self) -> None:
        self.status = self._codes.STATUS_SUCCEEDED

    def abort(self) -> None:
        self.status = self._codes.STATUS_ABORTED

    def canceled(self) -> None:
        self.status = self._codes.STATUS_CANCELED


class ResultRequest:
    """The result of an accepted goal (``ClientGoalHandle``), asked for again when it was lost.

    A result response can be lost -- the server answers before DDS has matched its response
    writer with this client's reader --, so when the goal's status says it finished and no
    result came within ``rerequest_s``, ``poll`` asks again (the server keeps it
    ``RESULT_KEPT_S``).  While the goal runs, ``poll`` also asks again after ``probe_s``, then
    at doubling intervals (at most ``PROBE_MAX_S``): a server that was killed and restarted
    with the goal in flight never answers the first request, and its successor answers a
    request for a goal it does not know at once, with STATUS_UNKNOWN (the caller then sends
    the goal again) -- without the probe the caller waited its whole result timeout.  A live
    server answers every request when the goal ends.  ``future`` is the latest request's;
    ``on_done`` is attached to each."""

    PROBE_FIRST_S = 2.0
    PROBE_MAX_S = 60.0

    def __init__(self, handle, rerequest_s: float = 1.0, on_done: Optional[Callable[[], None]] = None,
                 probe_s: float = PROBE_FIRST_S):
        from action_msgs.msg import GoalStatus
        self.terminal = (GoalStatus.STATUS_SUCCEEDED, GoalStatus.STATUS_ABORTED, GoalStatus.STATUS_CANCELED)
        self.handle, self.rerequest_s, self.on_done = handle, rerequest_s, on_done
        self.finished_at: Optional[float] = None
        self.probe = Backoff(probe_s, self.PROBE_MAX_S)
        self.future = self._request()

    def _request(self) -> Future:
        future = self.handle.get_result_async()
        if self.on_done is not None:
            future.add_done_callback(lambda _: self.on_done())
        return future

    def poll(self) -> None:
        if self.future.done():
            return
        now = time.monotonic()
        if self.handle.status not in self.terminal:
            if self.probe.due():                          # still running, or its server restarted
                self.future = self._request()
            return
        if self.finished_at is None:
            self.finished_at = now
        elif now - self.finished_at > self.rerequest_s:
            self.future, self.finished_at = self._request(), now


def wait_for_result(executor: SingleThreadedExecutor, handle, timeout_s: Optional[float], what: str,
                    rerequest_s: float = 1.0, heard: Optional[Callable[[], Optional[float]]] = None):
    """Spin until the result of an accepted goal arrives (asked for again when lost:
    ``ResultRequest``); returns the GetResult response.  TimeoutError / ShutdownRequested as
    ``wait_for`` (``heard``: the time of the goal's last feedback)."""
    silence = Silence(timeout_s, what, heard)
    request = ResultRequest(handle, rerequest_s)
    while not request.future.done():
        if not executor.context.ok():
            raise ShutdownRequested(what)
        silence.check()
        request.poll()
        spin_once(executor)
    return request.future.result()


def is_service_client(client) -> bool:
    """An rclpy service client (else an action client)."""
    return hasattr(client, 'srv_name')


def server_name(client) -> str:
    """'action server NAME' or 'service NAME' of an action or service client."""
    return f'service {client.srv_name}' if is_service_client(client) else f'action server {client._action_name}'


class ActionCaller:
    """Synchronous action calls of a node that spins its own executor between them.

    ``parameters`` is the node's ``DeclaredParameters`` with ``goal_timeout_s``,
    ``action_timeout_s``, ``action_retries`` and ``server_timeout_s``; they are read at every
    call, so ``ros2 param set`` changes apply to the next one.  ``executor`` is set once the
    node spins."""

    def __init__(self, node, parameters):
        self.node = node
        self.parameters = parameters
        self.executor: Optional[SingleThreadedExecutor] = None
        self.retries = 0
        """Goals sent again after a peer failed to answer (see ``call``)."""
        self.in_process_calls = 0
        """Goals handed to a server in this process (``serve_action``) instead of over DDS."""
        self._endpoints: dict = {}

    def call(self, client, goal, name: str, read: Optional[Callable[[Any], Any]] = None,
             prepare: Optional[Callable[[Any], None]] = None):
        """Send a goal and wait for its result, ``read(result)`` if given; sent again (after the
        server is back) when the attempt fails in a way a restarted peer may fix, at most
        ``action_retries`` times in a row; then the last reason is raised as ActionFailed.
        ``prepare(goal)`` runs before every send."""
        return self._with_retries(client, name, read, lambda: self.call_once(client, goal, name, prepare))

    def call_service(self, client, goal, name: str, make_request: Callable[[Any], Any],
                     read: Optional[Callable[[Any], Any]] = None, prepare: Optional[Callable[[Any], None]] = None):
        """``call`` for a service that takes a goal as one request (``make_request(goal)``) and
        answers with the fields of its result (``success``, ``message``, ...): the same retries,
        each attempt bounded by ``action_timeout_s``.  A service has no way to ask for a lost
        answer again, so while no answer comes the request is sent again (``prepare`` first),
        after ``ResultRequest``'s probe interval, then at doubling intervals: only for goals with
        a ``request_id``, which the server answers with the first request's result."""
        return self._with_retries(client, name, read,
                                  lambda: self.call_service_once(client, goal, name, make_request, prepare))

    def _with_retries(self, client, name: str, read: Optional[Callable[[Any], Any]], attempt_once: Callable[[], Any]):
        from .conversions import MessageValidationError
        retries = self.parameters['action_retries']
        for attempt in range(retries + 1):
            try:
                result = attempt_once()
                return result if read is None else read(result)
            except (PeerLost, TimeoutError, MessageValidationError) as err:     # not Unsupported
                if attempt == retries:
                    raise ActionFailed(f'{name}: {err} (after {retries} retries)') from err
                self.retries += 1
                self.node.get_logger().warning(f'{name}: {err}; sending it again once {server_name(client)} is up '
                                               f'(retry {attempt + 1} of {retries})')
                self.wait_for_server(client)
                self.pause(min(0.25 * 2 ** attempt, 5.0))    # a restarted peer may still be activating

    def call_service_once(self, client, goal, name: str, make_request: Callable[[Any], Any],
                          prepare: Optional[Callable[[Any], None]] = None):
        """One attempt of ``call_service``: the response, or PeerLost / TimeoutError saying why not."""
        def send() -> Future:
            if prepare is not None:
                prepare(goal)
            return client.call_async(make_request(goal))
        timeout = self.parameters['action_timeout_s']
        deadline = time.monotonic() + timeout
        sent = [send()]
        probe = Backoff(ResultRequest.PROBE_FIRST_S, ResultRequest.PROBE_MAX_S) if getattr(goal, 'request_id', '') \
            else None
        try:
            while not any(future.done() for future in sent):
                if not self.executor.context.ok():
                    raise ShutdownRequested(f'{name} response')
                if time.monotonic() >= deadline:
                    raise TimeoutError(f'{name} response: no answer within {timeout:g} s')
                if probe is not None and probe.due():
                    sent.append(send())
                spin_once(self.executor)
            response = next(future for future in sent if future.done()).result()
        finally:                           # answers to the other sends are not waited for
            for future in sent:
                if not future.done():
                    client.remove_pending_request(future)
        if not response.success and response.message.startswith(UNSUPPORTED):
            raise Unsupported(f'{name}: {response.message[len(UNSUPPORTED):]}')
        if not response.success:
            raise PeerLost(f'failed: {response.message}')
        return response

    def call_once(self, client, goal, name: str, prepare: Optional[Callable[[Any], None]] = None):
        """One attempt: the result, or PeerLost / TimeoutError saying why not."""
        from action_msgs.msg import GoalStatus
        if prepare is not None:
            prepare(goal)
        endpoint = self.in_process_endpoint(client)
        if endpoint is not None:
            return self.call_in_process(endpoint, goal, name)
        heard: list = [None]              # the goal's last feedback: a server still working is waited for

        def note_feedback(_message) -> None:
            heard[0] = time.monotonic()
        sent = wait_for(self.executor, client.send_goal_async(goal, feedback_callback=note_feedback),
                        self.parameters['goal_timeout_s'], f'{name} goal')
        if not sent.accepted:
            raise GoalRejected(f'goal rejected by {client._action_name} (its log says why)')
        response = wait_for_result(self.executor, sent, self.parameters['action_timeout_s'], f'{name} result',
                                   heard=lambda: heard[0])
        if response.status == GoalStatus.STATUS_UNKNOWN:
            raise PeerLost(f'{client._action_name} no longer knows the goal (its server restarted while it ran)')
        if not response.result.success:
            raise PeerLost(f'failed (status {response.status}): {response.result.message}')
        return response.result

    def in_process_endpoint(self, client) -> Optional[InProcessEndpoint]:
        """The in-process endpoint of ``client``'s server when a node on this executor serves it
        (``serve_action``) and ``intra_process_actions`` is on; else None (DDS)."""
        if not self.parameters['intra_process_actions']:
            return None
        if client not in self._endpoints:
            self._endpoints[client] = find_in_process_endpoint(self.executor, self.node, client._action_name)
        return self._endpoints[client]

    def call_in_process(self, endpoint: InProcessEndpoint, goal, name: str):
        """``call_once`` by a direct call: the server's goal check, then its execute callback, run
        here until it first awaits something; one that finishes without awaiting (an exact solve)
        costs no spin of the executor.  One that awaits (work in a thread, a service of another
        node) goes on as a task of this executor, as over DDS, within ``action_timeout_s``."""
        from rclpy.action import GoalResponse
        if endpoint.goal_callback(goal) != GoalResponse.ACCEPT:
            raise GoalRejected(f'goal rejected by {endpoint.name} (its log says why)')
        handle = InProcessGoalHandle(goal)
        result, pending = run_until_first_await(endpoint.execute_callback(handle))
        if pending is not None:
            task = self.executor.create_task(pending)
            result = wait_for(self.executor, task, self.parameters['action_timeout_s'], f'{name} result',
                              heard=lambda: handle.heard)
        self.in_process_calls += 1
        if not result.success:
            raise PeerLost(f'failed (status {handle.status}): {result.message}')
        return result

    def wait_for_server(self, client) -> None:
        """Spin until the server of ``client`` (an action or a service client) is there."""
        timeout = self.parameters['server_timeout_s']
        deadline = time.monotonic() + timeout
        ready = client.service_is_ready if is_service_client(client) else client.server_is_ready
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f'{server_name(client)} did not appear within {timeout:g} s')
            if not self.executor.context.ok():
                raise ShutdownRequested(server_name(client))
            spin_once(self.executor)

    def pause(self, seconds: float) -> None:
        """Wait, serving callbacks (parameters) meanwhile."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            if not self.executor.context.ok():
                raise ShutdownRequested('pause')
            spin_once(self.executor)


Wait = Callable[[Callable[[], bool], float], Awaitable[bool]]
"""``await wait(condition, timeout_s)``: True once ``condition()`` holds, False when the wait
gives up (timeout, or the caller's own reason to stop)."""


async def call_async(client, goal, name: str, wait: Wait, wait_future: Callable[[Future, float], Awaitable[bool]],
                     result_timeout_s: float, on_done: Callable[[], None], stopped: Callable[[], bool],
                     server_timeout_s: float = 5.0, goal_timeout_s: float = 10.0):
    """One attempt from an async callback: the GetResult response of ``goal`` on ``client``.
    Every wait is bounded (a lost goal or result message would otherwise hold the caller
    forever); a result that does not come although the goal's status says it finished is asked
    for again.  ``on_done`` runs when a result request completes (to wake ``wait``); the
    result wait gives up early once ``stopped()``.  Raises GoalRejected, or PeerLost saying
    which wait gave up."""
    if not await wait(client.server_is_ready, server_timeout_s):
        raise PeerLost(f'{name} is not available')
    sent = client.send_goal_async(goal)
    if not await wait_future(sent, goal_timeout_s):
        raise PeerLost(f'{name} did not answer the goal within {goal_timeout_s:g} s')
    handle = sent.result()
    if not handle.accepted:
        raise GoalRejected(f'goal rejected by {name} (its log says why)')
    deadline = time.monotonic() + result_timeout_s
    result = ResultRequest(handle, on_done=on_done)
    while not await wait(lambda: result.future.done(), 1.0):
        if time.monotonic() > deadline or stopped():
            raise PeerLost(f'no result from {name} within {result_timeout_s:g} s')
        result.poll()                                     # finished, but its result was lost: ask again
    return result.future.result()
