"""Load and soak (bench/soak.py): the whole sim-only graph runs as real processes while
/proc is sampled; no process outlives the run, FD and thread counts stay flat, the loop
keeps iterating through a stalled robot emulator (and, in the long run, a killed and
restarted node)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip('rclpy')
pytest.importorskip('sim2real_bilevel_interfaces')

pytestmark = pytest.mark.ros

SOAK_PATH = Path(__file__).resolve().parents[1] / 'bench' / 'soak.py'
FD_SLACK = 4
THREAD_SLACK = 2


def _soak_module():
    spec = importlib.util.spec_from_file_location('soak_bench', SOAK_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module         # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _thirds(samples, node, duration_s):
    rows = [s for s in samples if s.node == node]
    first = [s for s in rows if s.t_s <= duration_s / 3]
    last = [s for s in rows if s.t_s >= 2 * duration_s / 3]
    return first, last


def _assert_flat_and_clean(soak, result):
    table = soak.format_table(result)
    assert result.early_exit is None, table
    assert not result.leftover, f'processes outlived the soak:\n{table}'
    assert all(code is not None for code in result.exit_codes.values()), table
    assert set(result.nodes) == {s.name for s in soak.graph.nodes(soak.MODE)}, table
    for node in result.nodes:
        first, last = _thirds(result.samples, node, result.duration_s)
        assert first and last, f'{node}: too few samples\n{table}'
        assert max(s.fds for s in last) <= max(s.fds for s in first) + FD_SLACK, f'{node}: FDs grew\n{table}'
        assert max(s.threads for s in last) <= max(s.threads for s in first) + THREAD_SLACK, \
            f'{node}: threads grew\n{table}'
        assert max(s.children for s in last) == 0, f'{node}: child processes appeared\n{table}'


def test_short_soak_leaves_nothing_behind_and_keeps_iterating_through_a_stall(tmp_path, ros_env):
    soak = _soak_module()
    duration_s = 24.0
    result = soak.run_soak(duration_s, tmp_path / 'soak', ros_env, interval_s=1.0,
                           faults=('stall',), fault_at=(0.4,), stall_s=3.0, hang_after_s=10.0)
    _assert_flat_and_clean(soak, result)
    table = soak.format_table(result)
    assert result.iterations_end >= result.iterations_start + 20, table
    (stall,) = result.faults
    assert stall.resumed, table
    # the loop waits for the emulator, not much longer than the stall itself
    assert stall.stall_s < stall.held_s + 5.0, table
    iterations_late = [s.iteration for s in result.samples if s.t_s >= 2 * duration_s / 3]
    assert iterations_late[-1] > iterations_late[0], f'no progress in the last third\n{table}'
    assert (tmp_path / 'soak' / 'samples.csv').is_file() and (tmp_path / 'soak' / 'soak.png').is_file()


@pytest.mark.slow
def test_long_soak_survives_a_stall_and_a_node_restart_with_bounded_memory(tmp_path, ros_env):
    soak = _soak_module()
    duration_s = 300.0
    # discrete_3s2a keeps all its real data (real_history 100000, for the real critic): memory that
    # grows by design; bounded here so that what grows is a leak
    result = soak.run_soak(duration_s, tmp_path / 'soak', ros_env, interval_s=2.0,
                           faults=('stall', 'kill'), fault_at=(0.3, 0.6), stall_s=5.0, hang_after_s=60.0,
                           parameter_overrides={'outer_optimizer.real_history': 50})
    _assert_flat_and_clean(soak, result)
    table = soak.format_table(result)
    for fault in result.faults:
        assert fault.resumed, table
    # the optimizer keeps one record per iteration for results.json by design: what the same loop
    # retains per iteration in process (measured here) at the soak's iteration rate is growth by
    # design, and only the rest can be a leak (RSS also pays the allocator's overhead: x1.5)
    late = [s for s in result.samples if s.node == 'outer_optimizer' and s.t_s >= duration_s / 2]
    rate_per_min = (late[-1].iteration - late[0].iteration) / max(late[-1].t_s - late[0].t_s, 1e-9) * 60.0
    retained_mib_per_min = 1.5 * rate_per_min * _retained_bytes_per_iteration() / 2 ** 20
    print(f'\n{table}\n[soak] optimizer: {rate_per_min:.0f} iterations/min, retained by design '
          f'{retained_mib_per_min:.2f} MiB/min', flush=True)
    for node, row in result.nodes.items():
        by_design = retained_mib_per_min if node == 'outer_optimizer' else 0.0
        assert row['rss_slope_2nd_half_mib_per_min'] - by_design < 1.0, \
            f'{node}: RSS keeps growing ({by_design:.2f} MiB/min retained by design)\n{table}'


def _retained_bytes_per_iteration() -> float:
    """Bytes the in-process bi-level loop keeps per outer iteration on the soak's problem and
    settings (records, real-data accounting), by tracemalloc over 200 iterations."""
    import tracemalloc
    from sim2real_bilevel.core.config import builtin_config
    from sim2real_bilevel.core.experiments import make_run
    from sim2real_bilevel.core.problems import load_problem
    run = make_run(load_problem(builtin_config('discrete_3s2a')), 'bilevel', 0, iterations=10 ** 6,
                   overrides={'real_history': 50})
    run.start()
    for _ in range(60):                 # past the real-history bound
        run.step()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200):
            run.step()
        return (tracemalloc.get_traced_memory()[0] - before) / 200
    finally:
        tracemalloc.stop()
