"""What rviz shows of the robot: robot_description (transient local: a late subscriber gets it)
and the link poses (/tf with tf2_msgs, a MarkerArray without), from the problem's forward
kinematics -- checked against the acrobot's kinematics written out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sim2real_bilevel.core.problems import load_problem
from test_joints import PACKAGE, acrobot_problem_file
from test_nodes import ros  # noqa: F401 (the fixture)


def acrobot_link_poses(q1: float, q2: float) -> dict:
    """The acrobot's links (both turn about y, 0.5 m apart, 0 upright): origin and rotation angle
    about y, in (-pi, pi]."""
    return {'upper_link': ([0.0, 0.0, 0.0], wrap(q1)),
            'lower_link': ([0.5 * math.sin(q1), 0.0, 0.5 * math.cos(q1)], wrap(q1 + q2))}


def wrap(angle: float) -> float:
    """The angle in (-pi, pi]."""
    return -math.remainder(-angle, 2 * math.pi)


def angle_about_y(w: float, x: float, y: float, z: float) -> float:
    """The rotation angle of a quaternion that turns about y only, in (-pi, pi]."""
    assert abs(x) < 1e-9 and abs(z) < 1e-9, (w, x, y, z)
    return wrap(2.0 * math.atan2(y, w))


def test_forward_kinematics_and_the_transforms_of_the_links(tmp_path):
    from builtin_interfaces.msg import Time
    from sim2real_bilevel.nodes.robot_visuals import link_markers, transform_messages
    problem = load_problem(acrobot_problem_file(tmp_path))
    q = [0.4, -1.1]
    root, transforms = problem.link_transforms(q)
    assert root == 'base_link' and set(transforms) == {'base_link', 'upper_link', 'lower_link'}
    messages = transform_messages(root, transforms, Time(sec=3))
    assert [m.child_frame_id for m in messages] == ['upper_link', 'lower_link']
    markers = link_markers(root, transforms, Time(sec=3)).markers
    for message, marker in zip(messages, markers):
        origin, angle = acrobot_link_poses(*q)[message.child_frame_id]
        t, r = message.transform.translation, message.transform.rotation
        assert message.header.frame_id == 'base_link' and message.header.stamp.sec == 3
        assert [t.x, t.y, t.z] == pytest.approx(origin, abs=1e-12)
        assert angle_about_y(r.w, r.x, r.y, r.z) == pytest.approx(angle, abs=1e-12)
        assert marker.header.frame_id == 'base_link' and marker.text == message.child_frame_id
        assert [marker.pose.position.x, marker.pose.position.y, marker.pose.position.z] == pytest.approx(origin)
    # the pendulum (kind: robot) draws its rod the same way, and describes itself as a URDF
    pendulum = load_problem(PACKAGE / 'config' / 'pendulum.yaml')
    root, transforms = pendulum.link_transforms([0.3])
    (message,) = transform_messages(root, transforms, Time())
    assert message.child_frame_id == 'pendulum_link' and angle_about_y(
        message.transform.rotation.w, message.transform.rotation.x, message.transform.rotation.y,
        message.transform.rotation.z) == pytest.approx(0.3)
    assert '<joint name="pendulum_joint"' in pendulum.robot_description()
    # tabular and LQR problems draw nothing
    assert load_problem(PACKAGE / 'config' / 'discrete_3s2a.yaml').link_transforms([0]) is None


def subscribe_to_the_robot_model(ros, urdf) -> list:
    """Subscribe as rviz does, now: robot_description must arrive (transient local) and be the
    URDF's text; returns the list the link poses arrive in (MarkerArray, or TFMessage on /tf)."""
    from std_msgs.msg import String
    from sim2real_bilevel.nodes.robot_visuals import TFMessage
    from sim2real_bilevel.nodes.runtime import LATCHED
    from visualization_msgs.msg import MarkerArray
    descriptions, links = [], []
    ros.node.create_subscription(String, 'robot_description', descriptions.append, LATCHED)
    if TFMessage is None:
        ros.node.create_subscription(MarkerArray, 'link_markers', links.append, 10)
    else:                                                            # pragma: no cover - a full ROS install
        ros.node.create_subscription(TFMessage, '/tf', links.append, 100)
    ros.spin_until(lambda: descriptions, 30.0, 'robot_description (transient local)')
    assert descriptions[0].data == urdf.read_text()
    return links


@pytest.mark.ros
def test_the_emulator_publishes_the_robot_description_latched_and_the_link_poses(ros, tmp_path):
    """A subscriber that joins after the emulator published robot_description still gets it;
    after a reset the link poses of the published joint_states arrive (MarkerArray here, where
    tf2_msgs is not importable; /tf where it is)."""
    from sensor_msgs.msg import JointState
    from std_srvs.srv import Trigger
    from sim2real_bilevel.nodes.robot_visuals import TFMessage
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM
    problem_file = acrobot_problem_file(tmp_path)
    emulator = ros.start('robot_emulator', problem=str(problem_file), link_pose_rate='20.0')
    # the emulator publishes robot_description in its constructor, before it logs this line
    assert ros.wait_for_log(emulator, 'emulating the real system', timeout=60.0), emulator.log()
    states = []
    ros.node.create_subscription(JointState, 'joint_states', states.append, ROBOT_STREAM)
    links = subscribe_to_the_robot_model(ros, tmp_path / 'acrobot_limited.urdf')
    reset = ros.node.create_client(Trigger, 'robot_emulator/reset')
    assert ros.call(reset, Trigger.Request(), timeout=60.0).success
    ros.spin_until(lambda: states and links, 30.0, 'joint_states and the link poses after the reset')
    # the newest poses are those of the newest state (lockstep: one state per reset, none since)
    ros.spin_until(lambda: same_poses(link_poses(links[-1], TFMessage), acrobot_link_poses(*states[-1].position)),
                   10.0, 'the link poses of the newest state')
    assert len(states) == 1
    assert emulator.alive()


def same_poses(found: dict, expected: dict) -> bool:
    """The same links at the same origins and angles (to 1e-9)."""
    return set(found) == set(expected) and all(
        np.allclose(found[name][0], origin, atol=1e-9) and abs(wrap(found[name][1] - angle)) < 1e-9
        for name, (origin, angle) in expected.items())


def link_poses(message, tf_message_type) -> dict:
    """{link: (origin, angle about y)} of a MarkerArray (or of a TFMessage when tf2_msgs exists);
    angles in (-pi, pi], as acrobot_link_poses gives them."""
    poses = {}
    for item in message.markers if tf_message_type is None else message.transforms:
        if tf_message_type is None:
            p, r, name = item.pose.position, item.pose.orientation, item.text
        else:                                                        # pragma: no cover - a full ROS install
            p, r, name = item.transform.translation, item.transform.rotation, item.child_frame_id
        poses[name] = ([p.x, p.y, p.z], angle_about_y(r.w, r.x, r.y, r.z))
    return poses


@pytest.mark.ros
def test_the_bridge_can_draw_the_robot_from_the_joint_states_it_reads(ros, tmp_path):
    """A robot without a robot_state_publisher: the bridge, asked to, publishes the URDF and the
    link poses of the joint_states it reads (the test is the robot: joints in another order,
    with an extra one)."""
    from sensor_msgs.msg import JointState
    from sim2real_bilevel.nodes.robot_visuals import TFMessage
    from sim2real_bilevel.nodes.runtime import ROBOT_STREAM
    problem_file = acrobot_problem_file(tmp_path)
    bridge = ros.start('hardware_bridge', problem=str(problem_file), autostart='true', transport='topics',
                       publish_robot_description='true', link_pose_rate='20.0')
    assert ros.wait_for_log(bridge, 'active: policies may now be deployed', timeout=60.0), bridge.log()
    links = subscribe_to_the_robot_model(ros, tmp_path / 'acrobot_limited.urdf')
    states = ros.node.create_publisher(JointState, 'joint_states', ROBOT_STREAM)
    ros.spin_until(lambda: states.get_subscription_count() >= 1, 30.0, "the bridge's joint_states subscription")
    q1, q2 = 0.3, -0.8
    state = JointState(name=['gripper', 'elbow', 'shoulder'], position=[5.0, q2, q1], velocity=[0.0, 0.0, 0.0])

    def drawn() -> bool:
        states.publish(state)
        return bool(links)
    ros.spin_until(drawn, 30.0, 'the link poses')
    assert same_poses(link_poses(links[-1], TFMessage), acrobot_link_poses(q1, q2))
    assert list(link_poses(links[-1], TFMessage)) == ['upper_link', 'lower_link']
    assert bridge.alive()
