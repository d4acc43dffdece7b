"""Soak: the whole sim-only node graph as real processes for a long run, sampled from /proc.

Starts the graph the way ``sim2real-bilevel launch sim_only containers:=none`` does (``tools.launcher``'s
plan and process group: one process per node), with the outer optimizer set to many iterations so the loop stays busy,
and every ``--interval`` seconds reads for each node process: RSS (VmRSS) and thread count
(Threads) from /proc/PID/status, open file descriptors (entries of /proc/PID/fd) and child
processes; the optimizer's progress comes from its ``progress iteration=N`` output lines.

Faults (``--faults stall,kill``): at 1/3 of the run the robot emulator is SIGSTOPped for
``--stall-s`` seconds then SIGCONTed; at 2/3 one node (``--kill-node``, default sensitivity)
is SIGKILLed and started again with the same command in the graph's process group.  For each
fault the report says whether the loop went on (iterations rose afterwards) and after how
long; a loop that never moves again is reported as a hang with each node's process state, CPU
time used since the fault and the optimizer's last output lines.

At the end the graph is stopped as the launcher stops it (SIGINT, SIGTERM, SIGKILL) and every
process still carrying the run's ROS_LOG_DIR in its environment is listed: none may be left.
Writes samples.csv, soak.png, summary.json and one log per node into ``--out``.

    python sim2real_bilevel/bench/soak.py --minutes 10 --faults stall,kill --out /tmp/soak

discrete_3s2a keeps every real batch for its real critic (``real_history: 100000``), so the
optimizer's memory grows with the run by design; ``--set outer_optimizer.real_history=50``
bounds it, and then any growth left is the per-iteration record kept for results.json
(~0.8 KiB per iteration) or a leak.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import queue
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACKAGE_ROOT))
from sim2real_bilevel import graph  # noqa: E402
from sim2real_bilevel.tools import launcher  # noqa: E402

MODE = 'sim_only'
KIB_PER_MIB = 1024.0
CLOCK_TICKS = os.sysconf('SC_CLK_TCK')
SETTLE_S = 1.5
# shared with test/conftest.py: a domain held there is never used here, and the other way round
DOMAIN_LOCK_DIR = Path(tempfile.gettempdir()) / 'sim2real_bilevel_ros_domains'


# --- /proc readings ----------------------------------------------------------------------------------
@dataclass
class ProcessReading:
    rss_mib: float
    threads: int
    fds: int
    state: str
    cpu_s: float


def read_process(pid: int) -> Optional[ProcessReading]:
    """RSS, threads, open FDs, scheduler state and CPU seconds of one process (None once gone)."""
    try:
        status = Path(f'/proc/{pid}/status').read_text()
        fds = len(os.listdir(f'/proc/{pid}/fd'))
        stat = Path(f'/proc/{pid}/stat').read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = dict(line.split(':', 1) for line in status.splitlines() if ':' in line)
    # /proc/PID/stat: "pid (comm) state ..." -- comm may hold spaces, so split after its ')'
    after_comm = stat.rsplit(')', 1)[1].split()
    state = after_comm[0]
    if state == 'Z':
        return None
    rss_kib = float(fields.get('VmRSS', '0 kB').split()[0])
    cpu_s = (int(after_comm[11]) + int(after_comm[12])) / CLOCK_TICKS
    return ProcessReading(rss_kib / KIB_PER_MIB, int(fields['Threads']), fds, state, cpu_s)


def parent_map() -> dict[int, int]:
    """pid -> parent pid of every live process."""
    parents = {}
    for entry in os.scandir('/proc'):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f'/proc/{entry.name}/stat').read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(')', 1)[1].split()[1])
    return parents


def processes_with_environment(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (e.g. the run's ROS_LOG_DIR=...)."""
    wanted = marker.encode()
    found = []
    for entry in os.scandir('/proc'):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in Path(f'/proc/{entry.name}/environ').read_bytes().split(b'\0'):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def describe_process(pid: int) -> str:
    try:
        command = Path(f'/proc/{pid}/cmdline').read_bytes().replace(b'\0', b' ').decode(errors='replace')
        state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except OSError:
        return f'{pid} (gone)'
    return f'{pid} state={state} {command.strip()[:160]}'


# --- the graph -----------------------------------------------------------------------------------------
class SoakGraph(launcher.GraphProcesses):
    """The launcher's process group, plus restarting one node in the same group."""

    def restart(self, name: str) -> int:
        item = next(p for p in self.plans if p.spec.name == name)
        single = launcher.GraphProcesses([item], self.environment, self.shutdown_timeout)
        single.group, single.lines = self.group, self.lines     # same group, same output queue
        single.start()
        self.processes[name] = single.processes[name]
        return self.processes[name].pid


def soak_params_file(problem: str, iterations: int, overrides: dict, directory: Path) -> Path:
    """The problem's shipped parameter file with the optimizer's iteration count and any
    ``node.parameter`` overrides applied."""
    source = launcher.resolve_params_file(launcher.parse_assignments(MODE, [f'problem:={problem}']))
    document = yaml.safe_load(source.read_text())
    document.setdefault('/**/outer_optimizer', {}).setdefault('ros__parameters', {})['iterations'] = iterations
    for key, value in overrides.items():
        node, _, parameter = key.partition('.')
        document.setdefault(f'/**/{node}', {}).setdefault('ros__parameters', {})[parameter] = value
    path = directory / 'soak_params.yaml'
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass
class Sample:
    t_s: float
    node: str
    pid: int
    rss_mib: float
    threads: int
    fds: int
    children: int
    iteration: int


@dataclass
class FaultReport:
    kind: str
    node: str
    t_s: float
    """seconds since the first outer iteration (the samples' clock)"""
    iteration_before: int
    clock_s: float = 0.0
    """seconds since the graph was started (the output pump's clock)"""
    held_s: float = 0.0
    resumed: Optional[bool] = None
    stall_s: Optional[float] = None
    """longest time without a new iteration from the fault until the loop went on"""
    new_pid: Optional[int] = None
    hang: Optional[str] = None


@dataclass
class SoakResult:
    duration_s: float
    startup_s: float
    iterations_start: int
    iterations_end: int
    samples: list[Sample]
    faults: list[FaultReport]
    nodes: dict = field(default_factory=dict)
    exit_codes: dict = field(default_factory=dict)
    shutdown_s: float = 0.0
    leftover: list[str] = field(default_factory=list)
    early_exit: Optional[str] = None
    run_dir_files: int = 0
    run_dir_mib: float = 0.0
    """what the optimizer's run folder (results, bag, checkpoints) holds at the end"""
    out: str = ''


class OutputPump:
    """Takes the nodes' output lines off the launcher's queue: one log file per node, and
    the optimizer's progress lines as (time, iteration)."""

    def __init__(self, processes: SoakGraph, out: Path, started: float):
        self.processes = processes
        self.started = started
        self.logs = {item.spec.name: open(out / f'{item.spec.name}.log', 'a') for item in processes.plans}
        self.progress: list[tuple[float, int]] = []
        self.last_lines: list[str] = []
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True, name='output')
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            try:
                name, text = self.processes.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if text is None:
                continue
            stamp = time.monotonic() - self.started
            self.logs[name].write(f'{stamp:9.2f} {text}\n')
            if name != graph.OUTER_OPTIMIZER.name:
                continue
            self.last_lines = (self.last_lines + [text])[-8:]
            match = launcher.PROGRESS.match(text)
            if match is not None:
                self.progress.append((stamp, int(match.group(1))))

    def iteration(self) -> int:
        return self.progress[-1][1] if self.progress else -1

    def first_above(self, iteration: int, after_s: float) -> Optional[float]:
        for stamp, value in self.progress:
            if stamp >= after_s and value > iteration:
                return stamp
        return None

    def longest_gap(self, start_s: float, end_s: float) -> float:
        """The longest time without a rising iteration count between the last rise before
        ``start_s`` and ``end_s``."""
        rises, previous = [], -1
        for stamp, value in self.progress:
            if value > previous:
                rises.append(stamp)
            previous = max(previous, value)
        before = [t for t in rises if t <= start_s][-1:]
        window = before + [t for t in rises if start_s < t <= end_s]
        return max((b - a for a, b in zip(window, window[1:])), default=float('nan'))

    def latest_until(self, until_s: float) -> int:
        return max((value for stamp, value in self.progress if stamp <= until_s), default=-1)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2.0)
        for stream in self.logs.values():
            stream.close()


def claim_domain_id() -> tuple[int, object]:
    """A free ROS_DOMAIN_ID (1..101), locked for this process's life like the tests' ones."""
    DOMAIN_LOCK_DIR.mkdir(exist_ok=True)
    for domain in range(1, 102):
        handle = open(DOMAIN_LOCK_DIR / f'{domain}.lock', 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return domain, handle
        except BlockingIOError:
            handle.close()
    raise RuntimeError(f'every ROS_DOMAIN_ID 1..101 is locked in {DOMAIN_LOCK_DIR}')


def graph_environment(out: Path, base: Optional[dict] = None) -> dict:
    environment = dict(os.environ if base is None else base)
    environment.update(PYTHONUNBUFFERED='1', OMP_NUM_THREADS='1', RCUTILS_COLORIZED_OUTPUT='0',
                       ROS_LOG_DIR=str(out / 'ros_log'), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    environment.pop('ROS_LOCALHOST_ONLY', None)
    environment['PYTHONPATH'] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), environment.get('PYTHONPATH')]))
    # goals to the bridge signed, as on a robot (nodes/provenance.py): a key of this soak's own
    from sim2real_bilevel.graph import POLICY_KEY_ENV
    from sim2real_bilevel.core.provenance import generate_key_file
    key_file = out / 'policy.key'
    if not key_file.exists():
        generate_key_file(key_file)
    environment[POLICY_KEY_ENV] = str(key_file)
    return environment


# --- the soak -------------------------------------------------------------------------------------------
def run_soak(duration_s: float, out: Path, environment: dict, problem: str = 'discrete_3s2a',
             iterations: int = 1_000_000, interval_s: float = 2.0, faults: tuple[str, ...] = (),
             fault_at: Optional[tuple[float, ...]] = None, stall_s: float = 5.0, kill_node: str = 'sensitivity', hang_after_s: float = 60.0,
             startup_timeout_s: float = 180.0, parameter_overrides: Optional[dict] = None,
             shutdown_timeout_s: float = 10.0, log=print) -> SoakResult:
    """Run the graph for ``duration_s`` seconds counted from its first outer iteration.

    ``faults`` are injected at the fractions ``fault_at`` of the run (default: evenly spaced).
    ``environment`` must carry ROS_DOMAIN_ID (the graph_environment of a claimed domain, or a
    test's ros_env); ROS_LOG_DIR is set to ``out/ros_log`` so that every process of the run
    can be found afterwards."""
    out.mkdir(parents=True, exist_ok=True)
    (out / 'samples.csv').unlink(missing_ok=True)
    environment = graph_environment(out, environment)
    params = soak_params_file(problem, iterations, parameter_overrides or {}, out)
    # one process per node (not the launch's default containers): each node is sampled, stalled and
    # killed on its own
    arguments = launcher.parse_assignments(MODE, [f'problem:={problem}', f'params_file:={params}',
                                                  f'run_dir:={out / "run"}', 'containers:=none'])
    processes = SoakGraph(launcher.plan(MODE, arguments), environment, shutdown_timeout_s)
    started = time.monotonic()
    processes.start()
    pump = OutputPump(processes, out, started)
    result = SoakResult(duration_s, 0.0, 0, 0, [], [], out=str(out))
    try:
        _wait_for_first_iteration(processes, pump, startup_timeout_s, started)
        result.startup_s = time.monotonic() - started
        log(f'[soak] first outer iteration {result.startup_s:.1f} s after start; sampling for {duration_s:.0f} s')
        result.iterations_start = max(pump.iteration(), 0)
        _sample_loop(processes, pump, result, started, interval_s, faults, fault_at, stall_s, kill_node, hang_after_s, log)
    finally:
        result.iterations_end = max(pump.iteration(), 0)
        stop_started = time.monotonic()
        processes.stop()
        result.shutdown_s = time.monotonic() - stop_started
        time.sleep(0.5)
        pump.close()
        result.exit_codes = {name: p.returncode for name, p in processes.processes.items()}
        result.leftover = [describe_process(pid) for pid in
                           processes_with_environment(f'ROS_LOG_DIR={environment["ROS_LOG_DIR"]}')]
        files = [f for f in (out / 'run').rglob('*') if f.is_file()]
        result.run_dir_files = len(files)
        result.run_dir_mib = round(sum(f.stat().st_size for f in files) / 2**20, 2)
    result.nodes = summarize_nodes(result.samples, duration_s)
    write_outputs(result, out)
    return result


def _wait_for_first_iteration(processes: SoakGraph, pump: OutputPump, timeout_s: float, started: float) -> None:
    while pump.iteration() < 1:
        dead = [name for name, p in processes.processes.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f'nodes exited during start-up: {dead} (logs in {pump.logs[dead[0]].name})')
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f'no outer iteration within {timeout_s:g} s of start-up; '
                               f'optimizer said: {pump.last_lines}')
        time.sleep(0.2)


def _sample_loop(processes: SoakGraph, pump: OutputPump, result: SoakResult, started: float, interval_s: float,
                 faults: tuple[str, ...], fault_at: Optional[tuple[float, ...]], stall_s: float, kill_node: str, hang_after_s: float, log) -> None:
    begin = time.monotonic() - started
    end = begin + result.duration_s
    if fault_at is None:
        fault_at = tuple((index + 1) / (len(faults) + 1) for index in range(len(faults)))
    if len(fault_at) != len(faults):
        raise ValueError(f'{len(faults)} faults but {len(fault_at)} times to inject them')
    schedule = sorted((begin + result.duration_s * fraction, kind) for fraction, kind in zip(fault_at, faults))
    next_sample = begin
    cpu_at_fault: dict[str, float] = {}
    optimizer = graph.OUTER_OPTIMIZER.name
    while True:
        now = time.monotonic() - started
        if now >= end:
            break
        if schedule and now >= schedule[0][0]:
            _, kind = schedule.pop(0)
            report = _inject(kind, processes, pump, now, stall_s, kill_node, log)
            report.t_s = round(now - begin, 2)
            result.faults.append(report)
            cpu_at_fault = {name: (read_process(p.pid) or ProcessReading(0, 0, 0, '-', 0)).cpu_s
                            for name, p in processes.processes.items()}
            continue
        if processes.processes[optimizer].poll() is not None:
            result.early_exit = (f'outer optimizer exited with code {processes.processes[optimizer].returncode} '
                                 f'at t={now:.1f} s; last output: {pump.last_lines[-3:]}')
            log(f'[soak] {result.early_exit}')
            break
        for name, p in processes.processes.items():
            if name != optimizer and p.poll() is not None:
                log(f'[soak] node {name} (pid {p.pid}) exited with code {p.returncode} at t={now:.1f} s')
        if now >= next_sample:
            _take_sample(processes, pump, result, now - begin)
            next_sample += interval_s
            _update_faults(result.faults, pump, processes, now, hang_after_s, cpu_at_fault, log)
        time.sleep(min(0.2, max(0.0, next_sample - (time.monotonic() - started))))
    _update_faults(result.faults, pump, processes, time.monotonic() - started, 0.0, cpu_at_fault, log, final=True)


def _take_sample(processes: SoakGraph, pump: OutputPump, result: SoakResult, t_s: float) -> None:
    parents = parent_map()
    taken = []
    for name, p in processes.processes.items():
        reading = read_process(p.pid)
        if reading is None:
            continue
        children = sum(1 for parent in parents.values() if parent == p.pid)
        taken.append(Sample(round(t_s, 2), name, p.pid, round(reading.rss_mib, 2), reading.threads,
                            reading.fds, children, pump.iteration()))
    result.samples += taken
    # written as taken, so a soak that is cut short still leaves its figures
    path = Path(result.out) / 'samples.csv'
    new = not path.exists()
    with open(path, 'a', newline='') as stream:
        writer = csv.DictWriter(stream, fieldnames=list(Sample.__dataclass_fields__))
        if new:
            writer.writeheader()
        writer.writerows(asdict(s) for s in taken)


def _inject(kind: str, processes: SoakGraph, pump: OutputPump, now: float, stall_s: float, kill_node: str,
            log) -> FaultReport:
    if kind == 'stall':
        name = graph.ROBOT_EMULATOR.name
        report = FaultReport('stall', name, 0.0, pump.iteration(), clock_s=now, held_s=stall_s)
        pid = processes.processes[name].pid
        log(f'[soak] t={now:.1f} s: SIGSTOP {name} (pid {pid}) for {stall_s:g} s at iteration {report.iteration_before}')
        os.kill(pid, signal.SIGSTOP)
        time.sleep(stall_s)
        os.kill(pid, signal.SIGCONT)
        return report
    if kind == 'kill':
        old = processes.processes[kill_node]
        report = FaultReport('kill', kill_node, 0.0, pump.iteration(), clock_s=now)
        log(f'[soak] t={now:.1f} s: SIGKILL {kill_node} (pid {old.pid}) at iteration {report.iteration_before}')
        old.kill()
        old.wait(timeout=10)
        report.new_pid = processes.restart(kill_node)
        log(f'[soak] restarted {kill_node} as pid {report.new_pid}')
        return report
    raise ValueError(f'unknown fault {kind!r}; expected stall or kill')


def _update_faults(faults: list[FaultReport], pump: OutputPump, processes: SoakGraph, now: float,
                   hang_after_s: float, cpu_at_fault: dict, log, final: bool = False) -> None:
    """Mark faults resumed once the loop moved past them; describe a hang once it lasts."""
    for report in faults:
        if report.resumed:
            continue
        # progress lines come every progress_period_s (0.5 s), so iterations finished before
        # the fault may be printed just after it: the loop counts as going on only once it
        # passes what it had printed by SETTLE_S after the fault ended
        settled = report.clock_s + report.held_s + SETTLE_S
        if now < settled and not final:
            continue
        baseline = max(report.iteration_before, pump.latest_until(settled))
        moved = pump.first_above(baseline, settled)
        if moved is not None:
            report.resumed, report.stall_s, report.hang = True, round(pump.longest_gap(report.clock_s, moved), 2), None
            log(f'[soak] loop went on after the {report.kind} of {report.node}: no new iteration for {report.stall_s:.1f} s')
            continue
        waited = now - report.clock_s
        if report.hang is None and (final or waited >= hang_after_s):
            report.resumed = False
            states = []
            for name, p in processes.processes.items():
                reading = read_process(p.pid)
                if reading is None:
                    states.append(f'{name}: gone (code {p.poll()})')
                else:
                    states.append(f'{name}: state {reading.state}, {reading.cpu_s - cpu_at_fault.get(name, 0):.1f} '
                                  f'CPU s since the fault')
            report.hang = (f'no outer iteration past {baseline} for {waited:.0f} s after the '
                           f'{report.kind} of {report.node}; ' + '; '.join(states)
                           + f'; optimizer last said: {pump.last_lines[-3:]}')
            log(f'[soak] HANG: {report.hang}')


# --- figures --------------------------------------------------------------------------------------------
def summarize_nodes(samples: list[Sample], duration_s: float) -> dict:
    """Per node: start / peak / end RSS, the RSS slope over the second half (MiB/min, fitted
    to the last process of that node), threads, FDs and children at start and end."""
    table = {}
    for name in dict.fromkeys(s.node for s in samples):
        rows = [s for s in samples if s.node == name]
        last = [s for s in rows if s.pid == rows[-1].pid]
        # the second half of the soak, or of the last process's life if the node was restarted
        # after mid-run (its start-up growth is not a leak)
        late_from = max(duration_s / 2, (last[0].t_s + last[-1].t_s) / 2 if last[0] is not rows[0] else 0.0)
        late = [s for s in last if s.t_s >= late_from]
        slope = (float(np.polyfit([s.t_s / 60.0 for s in late], [s.rss_mib for s in late], 1)[0])
                 if len(late) >= 3 else float('nan'))
        table[name] = {
            'rss_start_mib': rows[0].rss_mib, 'rss_peak_mib': max(s.rss_mib for s in rows),
            'rss_end_mib': rows[-1].rss_mib, 'rss_slope_2nd_half_mib_per_min': slope,
            'threads_start': rows[0].threads, 'threads_end': rows[-1].threads,
            'threads_max': max(s.threads for s in rows),
            'fds_start': rows[0].fds, 'fds_end': rows[-1].fds, 'fds_max': max(s.fds for s in rows),
            'children_max': max(s.children for s in rows), 'pids': list(dict.fromkeys(s.pid for s in rows)),
        }
    return table


def format_table(result: SoakResult) -> str:
    lines = [f'soak {result.duration_s:.0f} s after a {result.startup_s:.1f} s start-up; outer iterations '
             f'{result.iterations_start} -> {result.iterations_end} '
             f'({(result.iterations_end - result.iterations_start) / max(result.duration_s, 1e-9) * 60:.0f}/min)',
             f'{"node":26s} {"RSS MiB start/peak/end":>24s} {"slope MiB/min":>13s} {"threads s/e":>11s} '
             f'{"FDs s/e":>9s} {"children":>8s} pids']
    for name, row in result.nodes.items():
        lines.append(f'{name:26s} {row["rss_start_mib"]:7.1f} /{row["rss_peak_mib"]:7.1f} /{row["rss_end_mib"]:7.1f} '
                     f'{row["rss_slope_2nd_half_mib_per_min"]:13.3f} {row["threads_start"]:5d}/{row["threads_end"]:<5d} '
                     f'{row["fds_start"]:4d}/{row["fds_end"]:<4d} {row["children_max"]:8d} '
                     f'{",".join(map(str, row["pids"]))}')
    for fault in result.faults:
        outcome = (f'loop went on, longest time without a new iteration {fault.stall_s:.1f} s' if fault.resumed
                   else f'HANG: {fault.hang}')
        lines.append(f'fault {fault.kind} {fault.node} at t={fault.t_s:.0f} s (iteration {fault.iteration_before}'
                     + (f', held {fault.held_s:g} s' if fault.kind == 'stall' else f', restarted as pid {fault.new_pid}')
                     + f'): {outcome}')
    if result.early_exit:
        lines.append(f'early exit: {result.early_exit}')
    lines.append(f'run folder: {result.run_dir_files} files, {result.run_dir_mib:.1f} MiB')
    lines.append(f'shutdown took {result.shutdown_s:.1f} s; exit codes {result.exit_codes}')
    lines.append('processes left after shutdown: ' + ('none' if not result.leftover else '; '.join(result.leftover)))
    return '\n'.join(lines)


def write_outputs(result: SoakResult, out: Path) -> None:
    with open(out / 'samples.csv', 'w', newline='') as stream:
        writer = csv.DictWriter(stream, fieldnames=list(Sample.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(s) for s in result.samples)
    document = asdict(result)
    document.pop('samples')
    (out / 'summary.json').write_text(json.dumps(document, indent=1))
    (out / 'table.txt').write_text(format_table(result) + '\n')
    if result.samples:
        plot(result, out / 'soak.png')


def plot(result: SoakResult, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name in result.nodes:
        rows = [s for s in result.samples if s.node == name]
        minutes = [s.t_s / 60 for s in rows]
        axes[0].plot(minutes, [s.rss_mib for s in rows], label=name)
        axes[1].plot(minutes, [s.fds for s in rows], label=name)
    by_time = {}
    for s in result.samples:
        by_time[s.t_s] = s.iteration
    axes[2].plot([t / 60 for t in by_time], list(by_time.values()), color='k')
    for fault in result.faults:
        for axis in axes:
            axis.axvline(fault.t_s / 60, color='r', linestyle=':', linewidth=1)
    axes[0].set_ylabel('RSS (MiB)')
    axes[1].set_ylabel('open FDs')
    axes[2].set_ylabel('outer iteration')
    axes[2].set_xlabel('minutes since the first outer iteration (red: faults)')
    axes[0].legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=10.0, help='soak length after the first outer iteration')
    parser.add_argument('--out', type=Path, default=None, help='output folder (default: a new temporary one)')
    parser.add_argument('--problem', default='discrete_3s2a')
    parser.add_argument('--iterations', type=int, default=1_000_000, help="the optimizer's iteration budget")
    parser.add_argument('--interval', type=float, default=2.0, help='seconds between samples')
    parser.add_argument('--faults', default='', help='comma-separated: stall (SIGSTOP the robot emulator), '
                        'kill (SIGKILL and restart --kill-node)')
    parser.add_argument('--fault-at', default='', help='comma-separated fractions of the run at which the '
                        'faults are injected, in the order of --faults (default: evenly spaced)')
    parser.add_argument('--stall-s', type=float, default=5.0)
    parser.add_argument('--kill-node', default='sensitivity',
                        choices=[s.name for s in graph.nodes(MODE) if s is not graph.OUTER_OPTIMIZER])
    parser.add_argument('--hang-after', type=float, default=60.0,
                        help='seconds without a new iteration after a fault before it is reported a hang')
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM=VALUE',
                        help='parameter override in the soak params file, e.g. hardware_bridge.transport=topics')
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition('=')
        overrides[key] = yaml.safe_load(value)
    out = args.out or Path(tempfile.mkdtemp(prefix='soak-'))
    environment = dict(os.environ)
    lock = None
    if 'ROS_DOMAIN_ID' not in environment:
        domain, lock = claim_domain_id()
        environment['ROS_DOMAIN_ID'] = str(domain)
    faults = tuple(f for f in args.faults.split(',') if f)
    fault_at = tuple(float(f) for f in args.fault_at.split(',') if f) or None
    print(f'[soak] ROS_DOMAIN_ID {environment["ROS_DOMAIN_ID"]}, output in {out}', flush=True)
    result = run_soak(args.minutes * 60.0, out, environment, problem=args.problem, iterations=args.iterations,
                      interval_s=args.interval, faults=faults, fault_at=fault_at, stall_s=args.stall_s, kill_node=args.kill_node,
                      hang_after_s=args.hang_after, parameter_overrides=overrides,
                      log=lambda text: print(text, flush=True))
    print(format_table(result), flush=True)
    if lock is not None:
        lock.close()
    return 0 if not result.leftover else 1


if __name__ == '__main__':
    sys.exit(main())
