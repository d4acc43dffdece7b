"""Real data from recordings (issue 14 item 1): run folders, this package's bags, any robot's bag of
joint_states + <controller>/commands cut into episodes -- read back into the episodes written."""
import time

import numpy as np
import pytest
import yaml

from sim2real_bilevel.core import checkpoint
from sim2real_bilevel.core.config import builtin_config
from sim2real_bilevel.core.datasets import (BehaviourUnknownError, Dataset, DatasetError, EpisodeRule,
                                            load_run_folder, save_dataset)
from sim2real_bilevel.core.problems import load_problem
from sim2real_bilevel.tools.recordings import RecordingOptions, load_real_data

MS = 1_000_000


def tabular_batch(episodes=4, seed=0):
    problem = load_problem(builtin_config('discrete_3s2a'))
    phi = problem.inner_solve(problem.theta0()).phi
    return problem, problem.sample_real(phi, episodes, np.random.default_rng(seed))


def write_robot_bag(folder, episodes, joints=('state', 'other'), commands='/ctrl/commands', reset=None,
                    reward=True, gap_ms=500):
    """A rosbag2 MCAP folder written with mcap-ros2-support's writer, with chosen log times: per step
    joint_states, command, reward; episodes separated by ``gap_ms`` (and a reset message when ``reset``)."""
    from mcap_ros2.writer import Writer
    from sim2real_bilevel.nodes.bag_recorder import full_definition

    folder.mkdir(parents=True)
    counts = {}
    with open(folder / 'bag_0.mcap', 'wb') as stream:
        writer = Writer(stream)
        schemas = {kind: writer.register_msgdef(kind.replace('/msg/', '/'), full_definition(kind))
                   for kind in ('sensor_msgs/msg/JointState', 'std_msgs/msg/Float64MultiArray',
                                'std_msgs/msg/Float64', 'std_msgs/msg/Empty')}

        def write(topic, kind, message, t):
            writer.write_message(topic, schemas[kind], message, log_time=t, publish_time=t)
            counts[(topic, kind)] = counts.get((topic, kind), 0) + 1

        def joint_state(position, t):
            values = [float(position)] + [7.0] * (len(joints) - 1)
            write('/joint_states', 'sensor_msgs/msg/JointState',
                  {'header': {'stamp': {'sec': 0, 'nanosec': 0}, 'frame_id': ''}, 'name': list(joints),
                   'position': values, 'velocity': [], 'effort': []}, t)

        t = 1_000 * MS
        for states, actions, rewards in episodes:
            if reset:
                write(reset, 'std_msgs/msg/Empty', {'structure_needs_at_least_one_member': 0}, t)
                t += MS
            joint_state(states[0], t)
            for step, action in enumerate(actions):
                t += 10 * MS
                write(commands, 'std_msgs/msg/Float64MultiArray',
                      {'layout': {'dim': [], 'data_offset': 0}, 'data': [float(action)]}, t)
                if reward:
                    write('/reward', 'std_msgs/msg/Float64', {'data': float(rewards[step])}, t + 2 * MS)
                joint_state(states[step + 1], t + 3 * MS)
            t += gap_ms * MS
        writer.finish()
    information = {'version': 9, 'storage_identifier': 'mcap', 'relative_file_paths': ['bag_0.mcap'],
                   'topics_with_message_count': [
                       {'topic_metadata': {'name': topic, 'type': kind, 'serialization_format': 'cdr'},
                        'message_count': count} for (topic, kind), count in counts.items()]}
    (folder / 'metadata.yaml').write_text(yaml.safe_dump({'rosbag2_bagfile_information': information}))
    return folder


def episodes_of(batch):
    return [(batch.states[i], batch.actions[i], batch.rewards[i]) for i in range(batch.actions.shape[0])]


@pytest.mark.parametrize('rule', ['gap', 'reset', 'length'])
def test_a_robot_bag_reads_back_into_the_episodes_written(tmp_path, rule):
    problem, batch = tabular_batch()
    folder = write_robot_bag(tmp_path / 'bag', episodes_of(batch), reset='/episode_reset' if rule == 'reset' else None)
    options = RecordingOptions(joints=['state'], rule=EpisodeRule(rule=rule, reset_topic='/episode_reset',
                                                                  length=batch.actions.shape[1]))
    dataset = load_real_data([folder], options)
    assert not dataset.behaviour_known
    assert len(dataset.batches) == 1
    read = dataset.batches[0]
    np.testing.assert_array_equal(read.states[..., 0], batch.states)
    np.testing.assert_array_equal(read.actions[..., 0], batch.actions)
    np.testing.assert_allclose(read.rewards, batch.rewards, rtol=0, atol=0)
    assert np.isnan(read.log_probs).all()
    # the tabular problem takes it as index data; an estimator needing the behaviour's probabilities refuses
    from sim2real_bilevel.core.problems.tabular.offline import prepare_dataset
    prepared = prepare_dataset(problem, dataset).batches[0]
    np.testing.assert_array_equal(prepared.states, batch.states)
    with pytest.raises(BehaviourUnknownError, match='importance weights'):
        dataset.require_behaviour_probabilities('importance weights')


def test_a_gap_smaller_than_the_rule_keeps_one_episode_and_a_fixed_length_cuts_it(tmp_path):
    _, batch = tabular_batch(episodes=2)
    folder = write_robot_bag(tmp_path / 'bag', episodes_of(batch), gap_ms=30)
    horizon = batch.actions.shape[1]
    merged = load_real_data([folder], RecordingOptions(joints=['state'], rule=EpisodeRule(gap_s=1.0)))
    assert merged.episodes == 1 and merged.batches[0].actions.shape[1] == 2 * horizon
    cut = load_real_data([folder], RecordingOptions(joints=['state'], rule=EpisodeRule('length', length=7)))
    assert [b.actions.shape[1] for b in cut.batches] == [7] and cut.episodes == (2 * horizon) // 7
    np.testing.assert_array_equal(cut.batches[0].actions[0, :, 0], batch.actions[0, :7])


def test_bad_recordings_name_what_is_missing(tmp_path):
    problem, batch = tabular_batch(episodes=2)
    folder = write_robot_bag(tmp_path / 'bag', episodes_of(batch))
    with pytest.raises(DatasetError, match="no joint 'elbow'.*'state', 'other'"):
        load_real_data([folder], RecordingOptions(joints=['state', 'elbow']))
    with pytest.raises(DatasetError, match="no topic '/arm/commands'.*/ctrl/commands"):
        load_real_data([folder], RecordingOptions(commands_topic='/arm/commands'))
    with pytest.raises(DatasetError, match="no topic '/robot/joint_states'"):
        load_real_data([folder], RecordingOptions(joint_states_topic='/robot/joint_states'))
    with pytest.raises(DatasetError, match='no reset topic'):
        load_real_data([folder], RecordingOptions(rule=EpisodeRule('reset', reset_topic='/reset')))
    with pytest.raises(DatasetError, match='no such file'):
        load_real_data([tmp_path / 'nowhere'])
    # two joints as the state of a one-state-index problem, and no reward topic for a tabular problem
    from sim2real_bilevel.core.problems.tabular.offline import prepare_dataset
    two = load_real_data([folder], RecordingOptions(joints=['state', 'other']))
    with pytest.raises(DatasetError, match=r'batch 1: states: 2 values per step, expected 1'):
        prepare_dataset(problem, two)
    silent = write_robot_bag(tmp_path / 'silent', episodes_of(batch), reward=False)
    with pytest.raises(DatasetError, match='reward topic'):
        prepare_dataset(problem, load_real_data([silent], RecordingOptions(joints=['state'])))


def test_lqr_recordings_get_their_cost_from_the_problem(tmp_path):
    """A robot bag without rewards: the LQR problem's known cost gives them."""
    from sim2real_bilevel.core.problems.lqr.offline import prepare_dataset
    problem = load_problem(builtin_config('lqr'))
    phi = problem.inner_solve(problem.theta0()).phi
    batch = problem.sample_real(phi, 2, np.random.default_rng(1))
    joints = [f'x{i}' for i in range(problem.n_states)]
    folder = tmp_path / 'bag'
    write_multi_joint_bag(folder, batch, joints)
    dataset = prepare_dataset(problem, load_real_data([folder], RecordingOptions(joints=joints, reward_topic=None)))
    assert dataset.episodes == 2
    np.testing.assert_allclose(dataset.batches[0].states, batch.states)
    np.testing.assert_allclose(dataset.batches[0].rewards, batch.rewards, rtol=1e-12)


def write_multi_joint_bag(folder, batch, joints):
    """Episodes of a continuous batch as joint_states (joints listed in reverse: read by name) and commands."""
    from mcap_ros2.writer import Writer
    from sim2real_bilevel.nodes.bag_recorder import full_definition
    folder.mkdir(parents=True)
    with open(folder / 'bag_0.mcap', 'wb') as stream:
        writer = Writer(stream)
        js = writer.register_msgdef('sensor_msgs/JointState', full_definition('sensor_msgs/msg/JointState'))
        cmd = writer.register_msgdef('std_msgs/Float64MultiArray', full_definition('std_msgs/msg/Float64MultiArray'))
        t = 10 ** 9
        for i in range(batch.actions.shape[0]):
            for step in range(batch.actions.shape[1] + 1):
                writer.write_message('/joint_states', js, {
                    'header': {'stamp': {'sec': 0, 'nanosec': 0}, 'frame_id': ''}, 'name': list(reversed(joints)),
                    'position': [float(v) for v in reversed(batch.states[i, step])], 'velocity': [], 'effort': []},
                    log_time=t, publish_time=t)
                if step < batch.actions.shape[1]:
                    t += 5 * MS
                    writer.write_message('/ctrl/commands', cmd, {'layout': {'dim': [], 'data_offset': 0},
                                                                 'data': [float(v) for v in batch.actions[i, step]]},
                                         log_time=t, publish_time=t)
                    t += 5 * MS
            t += 10 ** 9
        writer.finish()
    information = {'version': 9, 'storage_identifier': 'mcap', 'relative_file_paths': ['bag_0.mcap'],
                   'topics_with_message_count': [
                       {'topic_metadata': {'name': '/joint_states', 'type': 'sensor_msgs/msg/JointState'}},
                       {'topic_metadata': {'name': '/ctrl/commands', 'type': 'std_msgs/msg/Float64MultiArray'}}]}
    (folder / 'metadata.yaml').write_text(yaml.safe_dump({'rosbag2_bagfile_information': information}))


def test_run_folders_and_saved_datasets_read_back(tmp_path):
    _, batch = tabular_batch()
    dataset = Dataset(batches=[batch, batch], behaviour='test policy')
    save_dataset(dataset, tmp_path / 'data', policy_phi=np.zeros(3))
    read = load_real_data([tmp_path / 'data'])
    assert read.behaviour_known and read.episodes == 8 and read.behaviour == 'test policy'
    np.testing.assert_array_equal(read.batches[1].states, batch.states)
    np.testing.assert_array_equal(read.batches[1].log_probs, batch.log_probs)
    with pytest.raises(DatasetError, match='already holds real batches'):
        save_dataset(dataset, tmp_path / 'data')
    # a solve run dir: RUN_DIR/<method>/seed<k>/real/
    checkpoint.save_real_batch(tmp_path / 'run' / 'bilevel' / 'seed0', 1, batch, {'iteration': 1})
    assert load_run_folder(tmp_path / 'run').episodes == 4
    # a corrupt batch file is an error, never skipped
    path = checkpoint.real_batch_path(tmp_path / 'data', 2)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DatasetError, match='batch_000002.npz: not a readable real batch'):
        load_real_data([tmp_path / 'data'])


def test_this_packages_bag_reads_back_its_real_batches(ros_context, tmp_path):
    """real_trajectories recorded by the package's recorder (real rclpy, real DDS) read back."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sim2real_bilevel.nodes.bag_recorder import BagRecorder
    from sim2real_bilevel.nodes.conversions import trajectories_to_msg
    from sim2real_bilevel.nodes.runtime import EVENTS
    from sim2real_bilevel_interfaces.msg import TrajectoryBatch

    _, first = tabular_batch(episodes=3, seed=1)
    _, second = tabular_batch(episodes=2, seed=2)
    node = rclpy.create_node('recorder_test', context=ros_context)
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    try:
        recorder = BagRecorder(node, tmp_path / 'bag', [('real_trajectories', TrajectoryBatch, EVENTS)])
        publisher = node.create_publisher(TrajectoryBatch, 'real_trajectories', EVENTS)
        deadline = time.monotonic() + 20
        while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        for batch in (first, second):
            publisher.publish(trajectories_to_msg(batch))
        while recorder.count('/real_trajectories') < 2 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert recorder.count('/real_trajectories') == 2
        recorder.close()
    finally:
        executor.shutdown()
        node.destroy_node()
    dataset = load_real_data([tmp_path / 'bag'])
    assert dataset.behaviour_known and dataset.episodes == 5
    for read, written in zip(dataset.batches, (first, second)):
        np.testing.assert_array_equal(read.states, written.states)
        np.testing.assert_array_equal(read.actions, written.actions)
        np.testing.assert_allclose(read.log_probs, written.log_probs)


def test_a_robot_bag_of_an_unknown_controller_feeds_the_offline_loop(tmp_path):
    """The behaviour's probabilities are unknown (NaN); the tabular offline loop needs none of them."""
    from sim2real_bilevel.core.offline import make_offline_run
    problem, batch = tabular_batch(episodes=30, seed=3)
    folder = write_robot_bag(tmp_path / 'bag', episodes_of(batch))
    dataset = load_real_data([folder], RecordingOptions(joints=['state']))
    run = make_offline_run(problem, 'bilevel', dataset, seed=0, iterations=5)
    run.run()
    report = run.final_report()
    assert report['transitions'] == batch.n_transitions and 'probabilities unknown' in report['dataset']
    assert report['real_return_ci_low'] <= report['real_return_estimate'] <= report['real_return_ci_high']
    assert 0.0 <= report['coverage'] <= 1.0
