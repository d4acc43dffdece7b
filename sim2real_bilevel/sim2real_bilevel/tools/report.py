"""``sim2real-bilevel report RUN_DIR``: the run's plots, drawn from its recorded bag alone.

Reads RUN_DIR/bag (MCAP rosbag2, decoded with the schemas stored in the file, so no ROS
installation is needed) and draws, against the outer iteration: normalised and real return,
the in-sim gradient norm ||phi_hat|| of the trained policy, the outer gradient norm, and every
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

    theta = {k[len('theta/'):]: v for k, v in series.items() if k.startswith('theta/')}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    ax = axes[0][0]
    for name in ('normalized_return',):
        if name in series:
            ax.plot(series[name], label=name)
    ax.axhline(1.0, color='grey', linewidth=0.8, linestyle=':')
    ax.set_title('normalised real return')
    ax = axes[0][1]
    for name in ('real_return', 'real_return_estimate'):
        if name in series:
            ax.plot(series[name], label=name, alpha=0.8)
    ax.set_title('real return (exact and sampled estimate)')
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


def report(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    bag = run_dir / 'bag'
    if not (bag / 'metadata.yaml').is_file():
        raise FileNotFoundError(f'{bag}: no recorded bag (expected metadata.yaml and an .mcap file)')
    series = load_series(bag)
    if 'normalized_return' not in series and 'real_return' not in series:
        raise ValueError(f'{bag}: no metrics/normalized_return or metrics/real_return messages recorded')
    path = run_dir / 'report.png'
    draw(series, path, f'{run_dir.name}: {max(len(v) for v in series.values())} records from {bag}')
    returns = series.get('normalized_return', [])
    if returns:
        print(f'{run_dir}: {len(returns) - 1} outer iterations, normalised real return '
              f'{returns[0]:.4f} -> {returns[-1]:.4f} (best {max(returns):.4f})')
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
