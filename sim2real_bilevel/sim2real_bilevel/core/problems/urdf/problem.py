"""``UrdfProblem``: a robot from its URDF, the task as data (see the package docstring)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ...urdf_model import UrdfModel
from ...urdf_robot import RigidBodyDynamics
from ..robot.problem import RobotProblem
from .config import read_problem_file


class UrdfProblem(RobotProblem):
    """``RobotProblem``'s machinery (CRN rollouts, inner solvers, sensitivities, real gradient
    estimators, baselines, step-by-step real system and controller) on ``UrdfModel`` and the
    pybullet stand-in ``robots.urdf_robot.UrdfEmulator``."""

    kind = 'urdf'

    def __init__(self, *, urdf_path, joint_names, description, settings, physical, reward_terms,
                 transition_noise_std, real_parameters, real_substeps: int, **arguments):
        self.urdf_path = urdf_path
        self.joint_names = tuple(joint_names)
        self.settings = settings
        joints = [description.joints[name] for name in joint_names]
        dynamics = RigidBodyDynamics(urdf_path, joint_names, gravity=settings.gravity)
        model = UrdfModel(dynamics, settings, physical, reward_terms, transition_noise_std,
                          default_damping=[j.damping for j in joints], default_friction=[j.friction for j in joints],
                          joint_lower=[j.lower for j in joints], joint_upper=[j.upper for j in joints],
                          angular=[j.type != 'prismatic' for j in joints])
        super().__init__(geometry=None, real_parameters=real_parameters, real_substeps=real_substeps,
                         transition_noise_std=transition_noise_std, model=model, **arguments)

    @property
    def control_period(self) -> float:
        return float(self.settings.control_period)

    @classmethod
    def from_dict(cls, data: dict, source: str, policy=None) -> 'UrdfProblem':
        return cls(policy=policy, **read_problem_file(data, source))

    def oracle_theta_full(self) -> np.ndarray:
        """The true value of every theta entry and the task's reward weights (reporting only).
        A joint entry shared by several joints takes their mean true value; a true value of
        zero maps to the entry's lower bound."""
        truth = self._real_parameters
        per_joint = {'damping': truth.damping, 'coulomb_friction': truth.coulomb_friction,
                     'armature': truth.armature, 'motor_gain': truth.motor_gain}
        logs = []
        for index, entry in enumerate(self.model.physical):
            if entry.kind == 'mass_scale':
                value = truth.mass_scale.get(entry.link, 1.0)
            elif entry.kind == 'payload_mass':
                value = truth.payloads.get(entry.link, (0.0, None))[0]
            elif entry.kind == 'payload_distance':     # the true centre's component along the direction
                direction = np.asarray(entry.center_of_mass, dtype=np.float64)
                center = truth.payloads.get(entry.link, (0.0, (0.0, 0.0, 0.0)))[1]
                value = float(np.dot(center, direction) / np.linalg.norm(direction))
            else:
                value = float(np.mean([per_joint[entry.kind][j] for j in entry.joints]))
            logs.append(math.log(value) if value > 0 else self._lower_full[index])
        return np.concatenate([logs, np.log(self.task_weights)])

    def make_emulator(self):
        """A fresh pybullet stand-in with the hidden true parameters."""
        from ...robots.urdf_robot import UrdfEmulator
        return UrdfEmulator(self.urdf_path, self.joint_names, self._real_parameters, gravity=self.settings.gravity,
                            control_period=self.settings.control_period, physics_substeps=self._real_substeps,
                            initial_position_range=self.initial.position,
                            initial_velocity_range=self.initial.velocity)
