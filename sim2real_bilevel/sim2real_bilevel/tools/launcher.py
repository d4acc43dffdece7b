"""``sim2real-bilevel launch MODE name:=value ...``: the node graph without ``ros2 launch``.

Brings up the processes that ``launch/<mode>.launch.py`` describes (both read
``sim2real_bilevel.graph``), with the same names, parameter files and overrides; prefixes
each node's output with its name; shows the outer loop's progress; ends when the outer
optimizer ends.  All nodes run in one process group that the launcher signals as a whole
(SIGINT, then SIGTERM, then SIGKILL after ``--shutdown-timeout``), and each child asks the
kernel to SIGTERM it if the launcher itself dies, so no node outlives a launch.
"""
from __future__ import annotations

import ctypes
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

from .. import graph

PROGRESS = re.compile(r'^progress iteration=(\d+) total=(\d+)(.*)$')
PR_SET_PDEATHSIG = 1


class LaunchError(Exception):
    pass


def parse_assignments(mode: str, assignments: list[str]) -> dict[str, str]:
    values = graph.argument_defaults(mode)
    known = {a.name for a in graph.LAUNCH_ARGUMENTS} | set(graph.MODE_ARGUMENTS)
    for item in assignments:
        name, separator, value = item.partition(':=')
        if not separator:
            raise LaunchError(f'launch argument {item!r}: expected NAME:=VALUE')
        if name not in known:
            raise LaunchError(f'unknown launch argument {name!r}; known: {sorted(known)}')
        values[name] = value
    for name in ('seed', *graph.BOOLEAN_ARGUMENTS, *graph.FLOAT_ARGUMENTS):
        try:
            graph.typed_value(name, values[name])
        except ValueError as err:
            raise LaunchError(str(err)) from None
    try:
        graph.realtime_overrides('', values)
        graph.container_names(values['containers'], mode, values['robot_mode'])
    except ValueError as err:
        raise LaunchError(str(err)) from None
    return values


def resolve_params_file(arguments: dict[str, str], mode: str = 'sim_only') -> Optional[Path]:
    """``graph.params_file_for`` with the package's config folders; None: the nodes' defaults."""
    try:
        return graph.params_file_for(mode, arguments['problem'], arguments['params_file'],
                                     graph.config_directories())
    except graph.ParamsFileError as err:
        raise LaunchError(str(err)) from None


def default_run_dir(problem: str) -> Path:
    return Path('runs') / f'{Path(problem).stem}-{datetime.now():%Y%m%d-%H%M%S}'


def plan(mode: str, arguments: dict[str, str]) -> list[graph.ProcessPlan]:
    params_file = resolve_params_file(arguments, mode)
    plans = []
    robot_mode = graph.effective_robot_mode(arguments['robot_mode'], params_file)
    for spec, members in graph.processes(mode, arguments['containers'], offline=bool(arguments['real_data']),
                                         robot_mode=robot_mode):
        overrides = graph.parameter_overrides(spec, arguments, mode, members)
        command = [sys.executable, '-m', f'sim2real_bilevel.nodes.{spec.executable}']
        if spec.executable == graph.CONTAINER_EXECUTABLE:
            command += [member.executable for member in members]
        command += graph.ros_arguments(spec, arguments['namespace'], params_file, overrides,
                                       arguments['log_level'])
        plans.append(graph.ProcessPlan(spec, command, overrides, members))
    return plans


def optimizer_process(plans: list[graph.ProcessPlan]) -> str:
    """The name of the process that runs the outer optimizer (its own, or its container's)."""
    return next(item.spec.name for item in plans if graph.OUTER_OPTIMIZER in item.members)


def die_with_parent():
    """Runs in each child before exec: SIGTERM it when the launcher dies, whatever the cause."""
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class GraphProcesses:
    """The running node processes, in one process group."""

    def __init__(self, plans: list[graph.ProcessPlan], environment: dict, shutdown_timeout: float):
        self.plans = plans
        self.environment = environment
        self.shutdown_timeout = shutdown_timeout
        self.processes: dict[str, subprocess.Popen] = {}
        self.group: Optional[int] = None
        self.lines: queue.Queue = queue.Queue()

    def start(self) -> None:
        for item in self.plans:
            process = subprocess.Popen(
                item.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.environment, process_group=0 if self.group is None else self.group,
                preexec_fn=die_with_parent, text=True, bufsize=1, errors='replace')
            if self.group is None:
                self.group = process.pid
            self.processes[item.spec.name] = process
            threading.Thread(target=self._pump, args=(item.spec.name, process), daemon=True).start()

    def _pump(self, name: str, process: subprocess.Popen) -> None:
        for line in process.stdout:
            self.lines.put((name, line.rstrip('\n')))
        self.lines.put((name, None))

    def alive(self) -> list[str]:
        return [name for name, process in self.processes.items() if process.poll() is None]

    def signal_all(self, signum: int) -> None:
        if self.group is None:
            return
        try:
            os.killpg(self.group, signum)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        """SIGINT (what ros2 launch sends), then SIGTERM, then SIGKILL; reaps every child."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                break
            self.signal_all(signum)
            deadline = time.monotonic() + (self.shutdown_timeout if signum != signal.SIGKILL else 5.0)
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        # the group may hold grandchildren even after every direct child has gone
        self.signal_all(signal.SIGKILL)
        for process in self.processes.values():
            try:
                process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                pass


class ProgressView:
    """Prints node output with a [name] prefix; renders the optimizer's progress lines as a
    bar on a terminal (plain lines otherwise)."""

    def __init__(self, started: float, stream=sys.stderr, optimizer: str = graph.OUTER_OPTIMIZER.name):
        self.started = started
        self.optimizer = optimizer
        """The process whose output carries the progress lines."""
        self.stream = stream
        self.bar = None
        self.first_iteration_s: Optional[float] = None
        self.last_progress: Optional[str] = None
        self.tty = stream.isatty()

    def line(self, name: str, text: str) -> None:
        match = PROGRESS.match(text) if name == self.optimizer else None
        if match is None:
            self._write(f'[{name}] {text}')
            return
        iteration, total, rest = int(match.group(1)), int(match.group(2)), match.group(3).strip()
        if iteration >= 1 and self.first_iteration_s is None:
            self.first_iteration_s = time.monotonic() - self.started
            self._write(f'[launch] first outer iteration done {self.first_iteration_s:.2f} s after the launch command')
        self.last_progress = text
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm
                self.bar = tqdm(total=total, unit='it', file=self.stream, dynamic_ncols=True, desc='outer loop')
            self.bar.total = total
            self.bar.n = iteration
            self.bar.set_postfix_str(rest, refresh=True)
        else:
            self._write(f'[{name}] iteration {iteration}/{total} {rest}')

    def _write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def launch(mode: str, assignments: list[str], shutdown_timeout: float = 10.0,
           startup_timeout: Optional[float] = None) -> int:
    started = time.monotonic()
    arguments = parse_assignments(mode, assignments)
    if mode == 'sim_only' or arguments['run_dir']:
        arguments['run_dir'] = str(Path(arguments['run_dir'] or default_run_dir(arguments['problem'])).resolve())
    plans = plan(mode, arguments)
    environment = dict(os.environ)
    environment.setdefault('PYTHONUNBUFFERED', '1')
    environment.setdefault('RCUTILS_COLORIZED_OUTPUT', '1' if sys.stderr.isatty() else '0')
    if arguments['policy_key_file']:
        environment[graph.POLICY_KEY_ENV] = str(Path(arguments['policy_key_file']).expanduser().resolve())
    if 'ROS_LOG_DIR' not in environment and 'HOME' not in environment:
        environment['ROS_LOG_DIR'] = str(Path(arguments['run_dir'] or '.').resolve() / 'ros_log')

    view = ProgressView(started, optimizer=optimizer_process(plans))
    processes = GraphProcesses(plans, environment, shutdown_timeout)
    stop_requested = threading.Event()

    def on_signal(signum, frame):
        stop_requested.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    containers = [f'{item.spec.name} ({", ".join(m.name for m in item.members)})' for item in plans
                  if len(item.members) > 1]
    command = plans[0].command
    params = (command[command.index('--params-file') + 1] if '--params-file' in command
              else f"the nodes' defaults (no {graph.params_file_name(arguments['problem'])})")
    print(f'[launch] {mode}: {sum(len(item.members) for item in plans)} nodes in {len(plans)} process{"es" if len(plans) != 1 else ""}'
          + (f' (containers: {"; ".join(containers)})' if containers else '')
          + f', problem {arguments["problem"]}, params {params}'
          + (f', run_dir {arguments["run_dir"]}' if arguments['run_dir'] else '')
          + (f', offline on real_data {arguments["real_data"]} (no bridge, no emulator)' if arguments['real_data']
             else ''), file=sys.stderr, flush=True)
    status = 1
    try:
        processes.start()
        if mode == 'hardware' and not arguments['real_data']:
            bridge = graph.normalize_namespace(arguments['namespace']).rstrip('/') + '/' + graph.HARDWARE_BRIDGE.name
            print(f'[launch] the bridge {bridge} starts unconfigured: nothing moves the robot until you say so.\n'
                  f'[launch]   when the robot is ready: sim2real-bilevel bridge configure --node {bridge}, '
                  f'then sim2real-bilevel bridge activate --node {bridge}\n'
                  f'[launch]   (or ros2 lifecycle set {bridge} configure / activate); software stop: '
                  f'sim2real-bilevel bridge estop --node {bridge}; state: sim2real-bilevel bridge status\n'
                  f'[launch]   with reset_mode operator the bridge waits before each episode (its log and status '
                  f'say so): reset the robot, then sim2real-bilevel bridge continue (or abort) --node {bridge}',
                  file=sys.stderr, flush=True)
        status = _supervise(processes, view, stop_requested, mode)
    finally:
        processes.stop()
        _drain(processes, view)
        view.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    codes = {name: p.returncode for name, p in processes.processes.items()}
    print(f'[launch] all nodes stopped ({", ".join(f"{k}={v}" for k, v in codes.items())})',
          file=sys.stderr, flush=True)
    if arguments['run_dir'] and status == 0:
        print(f'[launch] results in {arguments["run_dir"]}', file=sys.stderr, flush=True)
    return status


def _supervise(processes: GraphProcesses, view: ProgressView, stop_requested: threading.Event, mode: str) -> int:
    """Forward output until the optimizer exits, a node dies, or a stop is requested."""
    optimizer = processes.processes[optimizer_process(processes.plans)]
    while True:
        try:
            name, text = processes.lines.get(timeout=0.1)
            if text is not None:
                view.line(name, text)
        except queue.Empty:
            pass
        if stop_requested.is_set():
            print('[launch] stop requested: shutting the graph down', file=sys.stderr, flush=True)
            return 130
        code = optimizer.poll()
        if code is not None:
            return code
        for name, process in processes.processes.items():
            if process is not optimizer and process.poll() is not None:
                print(f'[launch] node {name} exited early with code {process.returncode}: shutting the '
                      f'graph down', file=sys.stderr, flush=True)
                return process.returncode or 1


def _drain(processes: GraphProcesses, view: ProgressView) -> None:
    while True:
        try:
            name, text = processes.lines.get(timeout=0.2)
        except queue.Empty:
            return
        if text is not None:
            view.line(name, text)


def add_launch_command(commands) -> None:
    parser = commands.add_parser(
        'launch', help='bring up the ROS 2 node graph (what ros2 launch does with launch/<mode>.launch.py)',
        description='Bring up the node graph of MODE with launch arguments NAME:=VALUE: '
        + '; '.join(f'{a.name} ({a.description}; default {a.default or "empty"})' for a in graph.LAUNCH_ARGUMENTS)
        + '; ' + '; '.join(f'{name} ({description}; default ' + ', '.join(f'{v or "empty"} in {m}' for m, v in by_mode.items())
                           + ')' for name, (description, by_mode) in graph.MODE_ARGUMENTS.items()))
    parser.add_argument('mode', choices=sorted(graph.MODES), help='sim_only or hardware')
    parser.add_argument('assignments', nargs='*', metavar='NAME:=VALUE', help='launch arguments')
    parser.add_argument('--shutdown-timeout', type=float, default=10.0,
                        help='seconds each of SIGINT and SIGTERM may take before the next signal')
    parser.set_defaults(func=cmd_launch)


def cmd_launch(args) -> int:
    try:
        return launch(args.mode, args.assignments, shutdown_timeout=args.shutdown_timeout)
    except LaunchError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
