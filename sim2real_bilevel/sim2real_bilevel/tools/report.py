"""``sim2real-bilevel report RUN_DIR``: the run's plots, drawn from its recorded bag alone.

Reads RUN_DIR/bag (MCAP rosbag2, decoded with the schemas stored in the file, so no ROS
installation is needed) and draws, against the outer iteration: the estimated real return of
each iteration's real episodes with its confidence interval, the normalised and exact real return
(only a sim-only run with an evaluator has them; NaN and not drawn on hardware), the in-sim gradient norm ||phi_hat|| of the trained policy, the outer gradient norm, and every
theta entry.  Writes RUN_DIR/report.png and prints a short summary.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

METRIC_PREFIX = 'metrics/'


def load_series(bag_folder: Path) -> dict[str, list[float]]:
    """{metric name relative to the namespace: values in publication order} of every
    std_msgs/Float64 topic under */metrics/."""
    from .bag_reader import read_bag

    series: dict[str, list[float]] = defaultdict(list)
    for topic, _, message in read_bag(bag_folder):
        marker = topic.find('/' + METRIC_PREFIX)
        if marker < 0 or not hasattr(message, 'data') or not isinstance(message.data, float):
            continue
        series[topic[marker + 1 + len(METRIC_PREFIX):]].append(message.data)
    return dict(series)


def draw(series: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    import numpy as np

    theta = {k[len('theta/'):]: v for k, v in series.items() if k.startswith('theta/')}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    if evaluated(series):
        ax.plot(series['normalized_return'], label='normalized_return')
        ax.axhline(1.0, color='grey', linewidth=0.8, linestyle=':')
        ax.set_title('normalised real return (sim-only evaluator)')
    else:
        ax.text(0.5, 0.5, 'no evaluator (hardware run):\nthe normalised return is not known;\n'
                'see the estimated real return', ha='center', va='center', transform=ax.transAxes)
        ax.set_title('normalised real return: not evaluated')
    ax = axes[0][1]
    if 'real_return_estimate' in series:
        estimate = np.asarray(series['real_return_estimate'], dtype=float)
        ax.plot(estimate, label='estimate (real episodes)', marker='.')
        low, high = series.get('real_return_ci_low'), series.get('real_return_ci_high')
        if low and high and len(low) == len(high) == len(estimate):
            ax.fill_between(np.arange(len(estimate)), low, high, alpha=0.25, label='confidence interval')
    if evaluated(series) and 'real_return' in series:
        ax.plot(series['real_return'], label='exact (evaluator)', alpha=0.8)
    ax.set_title('real return: estimate from the real episodes with its interval')
    ax.legend(fontsize=8)
    ax = axes[1][0]
    for name in ('inner_grad_norm', 'outer_grad_norm'):
        if name in series and any(v > 0 for v in series[name]):
            ax.semilogy(series[name], label=name, alpha=0.8)
    ax.set_title('gradient norms: ||phi_hat|| of the trained policy, ||dJ/dtheta||')
    ax.legend(fontsize=8)
    ax = axes[1][1]
    for name, values in theta.items():
        ax.plot(values, label=name)
    ax.set_title('theta')
    if 0 < len(theta) <= 12:
        ax.legend(fontsize=7, ncol=2)
    for row in axes:
        for ax in row:
            ax.set_xlabel('outer iteration')
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluated(series: dict[str, list[float]]) -> bool:
    """Whether the run had an evaluator (a finite normalised return somewhere)."""
    import math
    return any(math.isfinite(v) for v in series.get('normalized_return', []))


def summary_lines(series: dict[str, list[float]]) -> list[str]:
    """The printed summary: the estimated real return (last, and best with its interval), and the
    normalised return only when the run had an evaluator."""
    import math
    lines = []
    estimates = series.get('real_return_estimate', [])
    lows, highs = series.get('real_return_ci_low', []), series.get('real_return_ci_high', [])
    measured = [i for i, v in enumerate(estimates) if math.isfinite(v)]
    if measured:
        last = measured[-1]
        best = max(measured, key=lambda i: estimates[i])

        def cell(i):
            if i >= len(lows) or i >= len(highs):
                return f'{estimates[i]:.4g}'
            if not (math.isfinite(lows[i]) and math.isfinite(highs[i])):
                return f'{estimates[i]:.4g} [no interval: one real episode]'
            return f'{estimates[i]:.4g} [{lows[i]:.4g}, {highs[i]:.4g}]'
        lines.append(f'estimated real return (real episodes, confidence interval): last {cell(last)} at iteration '
                     f'{last}, highest {cell(best)} at iteration {best}')
    returns = series.get('normalized_return', [])
    if evaluated(series):
        lines.append(f'normalised real return (sim-only evaluator) {returns[0]:.4f} -> {returns[-1]:.4f} '
                     f'(best {max(v for v in returns if math.isfinite(v)):.4f})')
    else:
        lines.append('normalised real return: not evaluated (no evaluator: a hardware run)')
    p50s = [v for v in series.get('loop_delay_p50_ms', []) if math.isfinite(v)]
    p99s = [v for v in series.get('loop_delay_p99_ms', []) if math.isfinite(v)]
    if p50s and p99s:
        lines.append(f'loop delay, sensing to command (real episodes with timestamps): p50 {min(p50s):.3g}-'
                     f'{max(p50s):.3g} ms, p99 up to {max(p99s):.3g} ms over {len(p50s)} iterations')
    return lines


def report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    bag = run_dir / 'bag'
    if not (bag / 'metadata.yaml').is_file():
        raise FileNotFoundError(f'{bag}: no recorded bag (expected metadata.yaml and an .mcap file)')
    series = load_series(bag)
    if not {'normalized_return', 'real_return', 'real_return_estimate'} & set(series):
        raise ValueError(f'{bag}: no metrics/real_return_estimate, metrics/normalized_return or '
                         'metrics/real_return messages recorded')
    path = run_dir / 'report.png'
    draw(series, path, f'{run_dir.name}: {max(len(v) for v in series.values())} records from {bag}')
    records = max(len(v) for v in series.values())
    print(f'{run_dir}: {records - 1} outer iterations')
    for line in summary_lines(series):
        print(f'  {line}')
    print(f'wrote {path}')
    return path


def add_report_command(commands) -> None:
    parser = commands.add_parser('report', help='plots of a run, drawn from its recorded bag (RUN_DIR/bag)')
    parser.add_argument('run_dir', help='a run folder written by the outer_optimizer node')
    parser.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    try:
        report(args.run_dir)
    except (FileNotFoundError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0
