"""What the outer optimizer tells the world about its loop: OuterMetrics, the std_msgs/Float64
``metrics/*`` and ``metrics/theta/*`` topics (rqt_plot), DiagnosticArray on /diagnostics and the
progress lines on stdout."""
from __future__ import annotations

import math
import re
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Float64
from sim2real_bilevel_interfaces.msg import OuterMetrics

from ..core.outer import IterationRecord
from . import conversions
from .runtime import EVENTS, internal_publisher

SCALARS = ('real_return', 'normalized_return', 'inner_grad_norm', 'outer_grad_norm', 'real_return_estimate',
           'real_return_ci_low', 'real_return_ci_high', 'loop_delay_p50_ms', 'loop_delay_p99_ms')
"""The Float64 ``metrics/*`` topics.  normalized_return and real_return are NaN without an evaluator
(hardware); the estimate and its interval come from the real episodes, and so does the loop's
sensing-to-command delay (NaN without timestamps: the batched transport)."""
RECORD_FIELDS = {'outer_grad_norm': 'grad_norm'}
"""The ``IterationRecord`` field of a metrics topic whose name differs from it."""


def topic_token(name: str) -> str:
    """'L[0][1][2]' -> 'L_0_1_2': a valid topic name token for each theta entry."""
    token = re.sub(r'[^A-Za-z0-9_]+', '_', name).strip('_')
    return token if token and not token[0].isdigit() else f'theta_{token}'


class LoopReporter:
    """The publishers of the loop's records and diagnostics, created on ``node``."""

    def __init__(self, node, theta_names: list[str], hardware_id: str, publications):
        self.node = node
        self.publications = publications
        self.hardware_id = hardware_id
        self.metric_names = [topic_token(name) for name in theta_names]
        self.metrics_publisher = internal_publisher(node, OuterMetrics, 'outer_metrics', EVENTS)
        self.diagnostics_publisher = internal_publisher(node, DiagnosticArray, '/diagnostics', EVENTS)
        self.scalar_publishers = {name: internal_publisher(node, Float64, f'metrics/{name}', EVENTS) for name in SCALARS}
        self.theta_metric_publishers = [internal_publisher(node, Float64, f'metrics/theta/{token}', EVENTS)
                                        for token in self.metric_names]
        self.last_progress = 0.0

    def scalar_topics(self) -> list:
        """(topic, type, QoS) of the Float64 metrics topics, for the bag."""
        topics = [(f'metrics/{name}', Float64, EVENTS) for name in self.scalar_publishers]
        topics += [(f'metrics/theta/{token}', Float64, EVENTS) for token in self.metric_names]
        return topics

    def publish_record(self, record: IterationRecord, loop, status: str, theta_version: int, policy_version: int,
                       progress_period_s: float) -> None:
        """An iteration's record on the metrics topics; diagnostics and a progress line at most
        every ``progress_period_s`` (and always for the first and last iteration)."""
        stamp = self.node.get_clock().now().to_msg()
        metrics = conversions.metrics_to_msg(record, theta_version, policy_version)
        metrics.header.stamp = stamp
        self.publications.publish(self.metrics_publisher, metrics)
        for name, publisher in self.scalar_publishers.items():
            value = getattr(record, RECORD_FIELDS.get(name, name))
            self.publications.publish(publisher, Float64(data=float(value)))
        for publisher, value in zip(self.theta_metric_publishers, record.theta):
            self.publications.publish(publisher, Float64(data=float(value)))
        now = time.monotonic()
        total = loop.config.iterations
        if now - self.last_progress >= progress_period_s or record.iteration >= total or record.iteration <= 1:
            self.last_progress = now
            self.publish_diagnostics(loop, status, theta_version)
            evaluated = (f'normalized_return={record.normalized_return:.4f} real_return={record.real_return:.4f} '
                         if math.isfinite(record.normalized_return) else '')
            print(f'progress iteration={record.iteration} total={total} {evaluated}'
                  f'real_return_estimate={record.real_return_estimate:.4g} '
                  f'ci=[{record.real_return_ci_low:.4g},{record.real_return_ci_high:.4g}] '
                  f'inner_grad_norm={record.inner_grad_norm:.2e} real_transitions={record.real_transitions}'
                  + (f' loop_delay_ms=[p50 {record.loop_delay_p50_ms:.3g}, p99 {record.loop_delay_p99_ms:.3g}]'
                     if math.isfinite(record.loop_delay_p50_ms) else '')
                  + (f' event="{record.event}"' if record.event else ''), flush=True)

    def publish_diagnostics(self, loop, status: str, theta_version: int) -> None:
        level = DiagnosticStatus.OK if not status.startswith('failed') else DiagnosticStatus.ERROR
        last = loop.history[-1] if loop.history else None
        values = {'iteration': loop.iteration, 'iterations': loop.config.iterations,
                  'theta_version': theta_version, 'real_transitions': loop.real_transitions}
        if last is not None:
            if math.isfinite(last.normalized_return):        # only with a (sim-only) evaluator
                values['normalized_return'] = f'{last.normalized_return:.6f}'
            values.update(real_return_estimate=f'{last.real_return_estimate:.6g}',
                          real_return_ci=f'[{last.real_return_ci_low:.6g}, {last.real_return_ci_high:.6g}]',
                          inner_grad_norm=f'{last.inner_grad_norm:.3e}')
            if math.isfinite(last.loop_delay_p50_ms):    # real episodes with timestamps (the topic transport)
                values.update(loop_delay_p50_ms=f'{last.loop_delay_p50_ms:.4g}',
                              loop_delay_p99_ms=f'{last.loop_delay_p99_ms:.4g}')
        best = getattr(loop, 'best', None)
        if best is not None:
            estimate = best.estimate(loop.config.confidence)
            values.update(best_iteration=best.iteration, best_real_return_estimate=f'{estimate.mean:.6g}',
                          best_real_return_ci=f'[{estimate.low:.6g}, {estimate.high:.6g}]',
                          best_episodes=estimate.episodes)
        values.update(safe_improvement=loop.config.safe_improvement, backtracks=getattr(loop, 'backtracks', 0))
        if last is not None and last.event:
            values['last_event'] = last.event
        status_msg = DiagnosticStatus(level=level, name=f'{self.node.get_fully_qualified_name()}: outer loop',
                                      message=status, hardware_id=self.hardware_id,
                                      values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        array = DiagnosticArray(status=[status_msg])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self.publications.publish(self.diagnostics_publisher, array)
