"""What rviz needs to show the robot, from the problem (``core/problem.py``'s contract):

- ``robot_description`` (std_msgs/String, reliable + transient local, as robot_state_publisher
  publishes it): the problem's URDF, so rviz's RobotModel display shows the robot and a late
  subscriber still gets it;
- the link poses, at a modest rate (``link_pose_rate``, off the control path): ``/tf``
  (tf2_msgs/TFMessage, one transform per link from the root link) where ``tf2_msgs`` is
  importable (a full ROS install), otherwise a visualization_msgs/MarkerArray on
  ``link_markers`` (one sphere per link at its pose, in the root frame) -- the pip-only install
  has no tf2_msgs.  The poses come from the problem's forward kinematics
  (``link_transforms``: adam for URDF robots), quaternions from transforms3d.

The robot-side node owns it: the robot emulator in sim-only runs.  On hardware a user's
robot_state_publisher normally publishes both; the node's parameters turn them off so that
there is never a second publisher.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from geometry_msgs.msg import TransformStamped
from std_msgs.msg import String
from visualization_msgs.msg import Marker, MarkerArray

from .runtime import LATCHED

try:                                   # a full ROS install; not on PyPI (docs/architecture.md)
    from tf2_msgs.msg import TFMessage
except ImportError:                    # pragma: no cover - depends on the installation
    TFMessage = None

LINK_MARKER_DIAMETER = 0.04            # m


def transform_messages(root: str, transforms: dict, stamp) -> list[TransformStamped]:
    """One geometry_msgs/TransformStamped per link other than the root: the link's 4x4 pose in
    ``root`` as translation and quaternion (transforms3d)."""
    from transforms3d.quaternions import mat2quat
    messages = []
    for link, matrix in transforms.items():
        if link == root:
            continue
        matrix = np.asarray(matrix, dtype=np.float64)
        message = TransformStamped()
        message.header.stamp, message.header.frame_id, message.child_frame_id = stamp, root, link
        t = message.transform.translation
        t.x, t.y, t.z = (float(v) for v in matrix[:3, 3])
        w, x, y, z = (float(v) for v in mat2quat(matrix[:3, :3]))
        r = message.transform.rotation
        r.w, r.x, r.y, r.z = w, x, y, z
        messages.append(message)
    return messages


def link_markers(root: str, transforms: dict, stamp) -> MarkerArray:
    """One sphere marker per link at its pose in ``root`` (namespace ``links``, ids in link order)."""
    markers = []
    for index, message in enumerate(transform_messages(root, transforms, stamp)):
        marker = Marker(ns='links', id=index, type=Marker.SPHERE, action=Marker.ADD, frame_locked=False)
        marker.header = message.header
        marker.text = message.child_frame_id
        p, t, r = marker.pose.position, message.transform.translation, message.transform.rotation
        p.x, p.y, p.z = t.x, t.y, t.z
        marker.pose.orientation.w, marker.pose.orientation.x = r.w, r.x
        marker.pose.orientation.y, marker.pose.orientation.z = r.y, r.z
        marker.scale.x = marker.scale.y = marker.scale.z = LINK_MARKER_DIAMETER
        marker.color.r, marker.color.g, marker.color.b, marker.color.a = 0.2, 0.6, 1.0, 1.0
        markers.append(marker)
    return MarkerArray(markers=markers)


class RobotVisuals:
    """robot_description and link poses of ``problem`` for ``node`` (see the module docstring).
    ``update(position)`` hands over the newest joint positions (problem order), from any thread;
    a timer at ``link_rate`` Hz publishes their poses when they changed."""

    def __init__(self, node, problem, *, description: bool, link_rate: float):
        self.node = node
        self.problem = problem
        self.position: Optional[Sequence[float]] = None
        self.published: Optional[Sequence[float]] = None
        self.description_publisher = None
        self.timer = self.tf_publisher = self.marker_publisher = None
        text = problem.robot_description() if description else None
        if text is not None:
            self.description_publisher = node.create_publisher(String, 'robot_description', LATCHED)
            self.description_publisher.publish(String(data=text))
        if link_rate > 0 and problem.joints() is not None:
            if TFMessage is not None:
                self.tf_publisher = node.create_publisher(TFMessage, '/tf', 100)
            else:
                self.marker_publisher = node.create_publisher(MarkerArray, 'link_markers', 10)
            self.timer = node.create_timer(1.0 / link_rate, self.publish_links)

    def update(self, position: Sequence[float]) -> None:
        """The newest joint positions (not copied: the caller does not change them later)."""
        self.position = position

    def publish_links(self) -> None:
        position = self.position
        if position is None or (self.published is not None and np.array_equal(position, self.published)):
            return
        frames = self.problem.link_transforms(position)
        if frames is None:
            return
        self.published = position
        stamp = self.node.get_clock().now().to_msg()
        if self.tf_publisher is not None:
            self.tf_publisher.publish(TFMessage(transforms=transform_messages(*frames, stamp)))
        else:
            self.marker_publisher.publish(link_markers(*frames, stamp))

    def destroy(self) -> None:
        if self.timer is not None:
            self.node.destroy_timer(self.timer)
