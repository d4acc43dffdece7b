"""Recorded episodes that end before the horizon (issue 12 termination x issue 14 recordings): a robot bag
of the pendulum_hanging stand-in pushed with 2 N m (its episodes stop at the terminal state, as the
bridge stops them: then one zero command) and held still (whole episodes), and a bag that stops
mid-episode.  The offline loop reads it: terminated episodes padded as the stand-in pads them, the
truncated one dropped with a warning naming the file and the episode, every count in the summary."""
import numpy as np
import pytest
import yaml

from sim2real_bilevel.core.datasets import Dataset, DatasetError, fit_to_horizon
from sim2real_bilevel.core.problem import Trajectories, alive_mask
from sim2real_bilevel.core.problems.robot.offline import OfflineEstimator, prepare_dataset
from sim2real_bilevel.tools.recordings import RecordingOptions, load_real_data

from test_termination import constant_effort_policy, hanging

MS = 1_000_000
JOINT = 'pendulum_joint'


def write_pendulum_bag(folder, episodes):
    """A rosbag2 MCAP folder (mcap-ros2-support's writer) of joint_states (position, velocity) and
    /effort_controller/commands: per episode (states (k+1, 2), commands (k,)) one state, then per
    step a command and the state after it, 20 ms apart; episodes 1 s apart."""
    from mcap_ros2.writer import Writer
    from sim2real_bilevel.nodes.bag_recorder import full_definition
    folder.mkdir(parents=True)
    counts = {'/joint_states': 0, '/effort_controller/commands': 0}
    with open(folder / 'bag_0.mcap', 'wb') as stream:
        writer = Writer(stream)
        joint_state = writer.register_msgdef('sensor_msgs/JointState', full_definition('sensor_msgs/msg/JointState'))
        command = writer.register_msgdef('std_msgs/Float64MultiArray',
                                         full_definition('std_msgs/msg/Float64MultiArray'))

        def state(row, t):
            writer.write_message('/joint_states', joint_state, {
                'header': {'stamp': {'sec': 0, 'nanosec': 0}, 'frame_id': ''}, 'name': [JOINT],
                'position': [float(row[0])], 'velocity': [float(row[1])], 'effort': []}, log_time=t, publish_time=t)
            counts['/joint_states'] += 1

        t = 10 ** 9
        for states, commands in episodes:
            state(states[0], t)
            for step, value in enumerate(commands):
                t += 10 * MS
                writer.write_message('/effort_controller/commands', command,
                                     {'layout': {'dim': [], 'data_offset': 0}, 'data': [float(value)]},
                                     log_time=t, publish_time=t)
                counts['/effort_controller/commands'] += 1
                t += 10 * MS
                state(states[step + 1], t)
            t += 10 ** 9
        writer.finish()
    kinds = {'/joint_states': 'sensor_msgs/msg/JointState',
             '/effort_controller/commands': 'std_msgs/msg/Float64MultiArray'}
    information = {'version': 9, 'storage_identifier': 'mcap', 'relative_file_paths': ['bag_0.mcap'],
                   'topics_with_message_count': [{'topic_metadata': {'name': name, 'type': kinds[name]},
                                                  'message_count': count} for name, count in counts.items()]}
    (folder / 'metadata.yaml').write_text(yaml.safe_dump({'rosbag2_bagfile_information': information}))
    return folder


def recorded(batch, n, bridge_zero_command=True, stop_at=None):
    """Episode n of a stand-in batch as the robot's topics show it: the states and commands that ran (up to
    the terminal state), then -- as the bridge does at a terminal state -- one zero command, after which the
    robot reports its state once more (held here); ``stop_at``: the recording stops after that step."""
    end = int(np.argmax(batch.dones[n])) + 1
    states, commands = batch.states[n, :end + 1], batch.actions[n, :end, 0]
    if bridge_zero_command and end < batch.actions.shape[1]:
        states, commands = np.concatenate([states, states[-1:]]), np.append(commands, 0.0)
    if stop_at is not None:
        states, commands = states[:stop_at + 1], commands[:stop_at]
    return states, commands


@pytest.fixture(scope='module')
def stand_in():
    problem = hanging()
    pushed = problem.sample_real(constant_effort_policy(problem, 2.0), 3, np.random.default_rng(1))
    still = problem.sample_real(constant_effort_policy(problem, 0.0), 3, np.random.default_rng(2))
    assert np.all(pushed.dones.argmax(1) < problem.horizon - 1), 'every pushed episode should end early'
    assert np.all(still.dones.argmax(1) == problem.horizon - 1), 'a still pendulum should never end'
    return problem, pushed, still


def test_a_bag_with_terminated_and_truncated_episodes_feeds_the_offline_loop(tmp_path, stand_in):
    problem, pushed, still = stand_in
    episodes = ([recorded(pushed, n) for n in range(3)] + [recorded(still, 0)]
                + [recorded(still, 2, stop_at=25)]       # stopped early by its controller, not at a terminal state
                + [recorded(still, 1)] + [recorded(still, 2, stop_at=30)])          # the bag stops mid-episode
    bag = write_pendulum_bag(tmp_path / 'bag', episodes)
    dataset = load_real_data([bag], RecordingOptions(joints=[JOINT], velocities=True, reward_topic=None))
    assert dataset.episodes == 7 and dataset.padded == 0
    with pytest.warns(UserWarning) as caught:
        prepared = prepare_dataset(problem, dataset)
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, UserWarning))
    assert len(messages) == 2
    assert messages[0].startswith(f'{bag} episode 4: 25 of 50 steps') and 'by the cutting rule' in messages[0]
    assert messages[1].startswith(f'{bag} episode 6: 30 of 50 steps') and 'recording stops mid-episode' in messages[1]
    assert prepared.episodes == 5 and prepared.padded == 3
    assert prepared.dropped == {'ended early by the cutting rule at a non-terminal state': 1,
                                'truncated (the recording stops mid-episode)': 1}
    summary = prepared.describe()
    assert '5 episodes (3 ended early at a terminal state, padded to the horizon)' in summary
    assert '2 dropped (1 ended early by the cutting rule at a non-terminal state, 1 truncated' in summary
    assert any('3 step(s) recorded after their terminal state ignored' in note for note in prepared.notes)
    # the padded episodes are the stand-in's own batch: held state, zero commands and rewards, dones at the end
    order = np.argsort([int(b.dones.argmax(1).min()) for b in prepared.batches])      # pushed batch first
    assert [b.actions.shape[1] for b in prepared.batches] == [problem.horizon] * len(prepared.batches)
    batch = Trajectories(*(np.concatenate([getattr(prepared.batches[i], name) for i in order])
                           for name in ('states', 'actions', 'rewards', 'dones', 'log_probs')))
    for name in ('states', 'actions', 'dones'):
        np.testing.assert_array_equal(getattr(batch, name)[:3], getattr(pushed, name), err_msg=name)
        np.testing.assert_array_equal(getattr(batch, name)[3:], getattr(still, name)[:2], err_msg=name)
    np.testing.assert_allclose(batch.rewards[:3], pushed.rewards, rtol=1e-12, atol=0)
    assert prepared.transitions == pushed.n_transitions + 2 * problem.horizon < 5 * problem.horizon
    # the estimator reads it: at the fitted behaviour it reproduces every recorded episode's return
    estimator = OfflineEstimator(problem, prepared, resamples=10)
    discounts = problem.gamma ** np.arange(problem.horizon)
    returns = np.where(alive_mask(batch.dones), batch.rewards, 0.0) @ discounts
    np.testing.assert_allclose(np.sort(estimator._terms(estimator.behaviour_phi)), np.sort(returns), rtol=1e-6)


def test_the_offline_loop_runs_on_the_recording_and_counts_only_transitions_that_ran(tmp_path, stand_in):
    from sim2real_bilevel.core.offline import make_offline_run
    from sim2real_bilevel.core.problems import load_problem
    from test_termination import HANGING
    _, pushed, still = stand_in
    data = yaml.safe_load(HANGING.read_text())      # a small inner level: one outer iteration in seconds
    data['inner'].update(episodes=4, max_iterations=2, cold_iterations=3, warmup_iterations=2)
    file = tmp_path / 'pendulum_hanging.yaml'
    file.write_text(yaml.safe_dump(data))
    problem = load_problem(file)
    bag = write_pendulum_bag(tmp_path / 'bag', [recorded(pushed, n) for n in range(3)]
                             + [recorded(still, n) for n in range(3)])
    dataset = load_real_data([bag], RecordingOptions(joints=[JOINT], velocities=True, reward_topic=None))
    run = make_offline_run(problem, 'bilevel', dataset, seed=0, iterations=1)
    run.run()
    report = run.final_report()
    expected = pushed.n_transitions + still.n_transitions
    assert run.real_transitions == expected == report['transitions'] and run.real_episode_count == 6
    assert '3 ended early at a terminal state' in report['dataset']


def test_episodes_shorter_than_the_horizon_without_a_terminal_state_are_dropped_never_silently(stand_in):
    problem, pushed, still = stand_in
    short = Trajectories(states=still.states[:, :21], actions=still.actions[:, :20], rewards=still.rewards[:, :20],
                         dones=np.zeros((3, 20), bool), log_probs=still.log_probs[:, :20], source='real')
    dataset = Dataset(batches=[short], sources=['run_a'])
    with pytest.warns(UserWarning, match=r'run_a batch 1 episode 2: 20 of 50 steps'):
        with pytest.raises(DatasetError, match=r'every episode was dropped.*--episode-length 50'):
            fit_to_horizon(dataset, problem.horizon, problem.termination_reason)
    cut = Dataset(batches=[short, pushed], sources=['run_a'])
    with pytest.warns(UserWarning):
        fitted = fit_to_horizon(cut, problem.horizon, problem.termination_reason)
    assert fitted.episodes == 3 and fitted.dropped == {'truncated (the recording stops mid-episode)': 3}
    assert fitted.batches[0] is pushed and fitted.padded == 0          # whole-horizon batches are kept as they are


def test_n_transitions_counts_steps_up_to_and_including_the_first_done():
    dones = np.zeros((3, 5), bool)
    dones[0, 1] = True                        # ended at step 1: 2 transitions ran
    dones[1, 4] = True                        # the horizon's end (the robot kind's convention): 5
    dones[2, [2, 3]] = True                   # a second done after the end changes nothing: 3
    batch = Trajectories(states=np.zeros((3, 6, 2)), actions=np.zeros((3, 5, 1)), rewards=np.ones((3, 5)),
                         dones=dones, log_probs=np.zeros((3, 5)))
    assert batch.n_transitions == 2 + 5 + 3
    no_dones = Trajectories(states=np.zeros((3, 6)), actions=np.zeros((3, 5)), rewards=np.ones((3, 5)),
                            dones=np.zeros((3, 5), bool), log_probs=np.zeros((3, 5)))
    assert no_dones.n_transitions == 15       # tabular and LQR batches: every step ran
