"""The URDF problem kind: a robot from its URDF (file or package:// URI), controlled joints by
name, theta = named uncertain quantities with bounds, the task as data.

- Simulator: ``core.urdf_model.UrdfModel`` -- rigid-body terms from adam-robotics, damping,
  smooth Coulomb friction, armature, motor gain, joint limits and the integrator from this
  project; theta = log of each named quantity (per-link mass scale, payload mass at a link,
  per-joint or shared damping / friction / armature / gain, reward weights).
- Real system: ``core.robots.urdf_robot.UrdfEmulator`` -- pybullet on the same URDF with the
  hidden ``real:`` values, plus stiction, a Stribeck bump, actuation delay, a hard effort limit
  and sensor noise, none of which the simulator family can represent.
- Everything else (J_sim on common random numbers, its gradient F, the inner solvers, the
  sensitivities, the pathwise / likelihood-ratio real gradients, domain randomisation, system
  identification, the normalised return against the oracle) is ``kind: robot``'s code: see
  ``core/problems/robot/__init__.py``.
"""
from .problem import UrdfProblem

__all__ = ['UrdfProblem']
