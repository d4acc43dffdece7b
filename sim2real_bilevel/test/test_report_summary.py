"""The run summary printed at the end of `scripts/run.sh` (tools/report.py ``summary_lines``)."""
import math

from sim2real_bilevel.tools.report import summary_lines


def test_an_estimate_from_one_real_episode_says_it_has_no_interval_instead_of_nan():
    nan = math.nan
    series = {'real_return_estimate': [nan, 4.0, 13.0], 'real_return_ci_low': [nan, nan, 11.5],
              'real_return_ci_high': [nan, nan, 14.5], 'normalized_return': [0.7, 0.8, 1.0]}
    estimate_line = summary_lines(series)[0]
    assert 'last 13 [11.5, 14.5] at iteration 2' in estimate_line
    series['real_return_ci_low'][2] = series['real_return_ci_high'][2] = nan
    estimate_line = summary_lines(series)[0]
    assert 'nan' not in estimate_line
    assert 'last 13 [no interval: one real episode] at iteration 2' in estimate_line


def test_the_loop_delay_is_summarised_only_where_the_real_episodes_had_timestamps():
    nan = math.nan
    series = {'real_return_estimate': [nan, 4.0, 5.0], 'normalized_return': [0.7, 0.8, 1.0],
              'loop_delay_p50_ms': [nan, 14.2, 18.9], 'loop_delay_p99_ms': [nan, 31.0, 40.3]}
    assert 'loop delay, sensing to command (real episodes with timestamps): p50 14.2-18.9 ms, p99 up to 40.3 ms ' \
           'over 2 iterations' in summary_lines(series)
    series['loop_delay_p50_ms'] = series['loop_delay_p99_ms'] = [nan, nan, nan]     # the batched transport
    assert not any('loop delay' in line for line in summary_lines(series))
