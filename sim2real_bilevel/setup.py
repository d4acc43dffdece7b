from glob import glob

from setuptools import find_packages, setup

package_name = 'sim2real_bilevel'

# one console_scripts executable per node (ros2 run sim2real_bilevel <node>)
NODES = ['differentiable_simulator', 'inner_trainer', 'sensitivity', 'outer_optimizer', 'hardware_bridge',
         'robot_emulator', 'container']

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', sorted(glob('launch/*.launch.py'))),
        ('share/' + package_name + '/config', sorted(glob('config/*.yaml'))),
        ('share/' + package_name + '/urdf', sorted(glob('urdf/*.urdf'))),
    ],
    # What pip can provide.  rclpy and the message packages come from the ROS 2 install (or
    # the ros-jazzy-* wheels scripts/setup.sh installs); torch must be installed with its pin
    # (torch==2.13.0) beforehand, or pip would pull a CUDA build.
    install_requires=[
        'setuptools',
        'numpy',
        'scipy',
        'PyYAML',
        'matplotlib',
        'torch',
        'cma',
        'tqdm',
        'pybullet',
        'transforms3d',
        'mcap',
        'mcap-ros2-support',
    ],
    extras_require={'test': ['pytest', 'hypothesis']},
    zip_safe=True,
    maintainer='sim2real_bilevel maintainers',
    maintainer_email='sim2real-bilevel@example.com',
    description='Bi-level RL for Sim2Real as a ROS 2 node graph: simulator parameters tuned for the real-world '
                'return of the policy trained in the simulator.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': ['sim2real-bilevel = sim2real_bilevel.cli:main']
        + [f'{node} = sim2real_bilevel.nodes.{node}:main' for node in NODES],
    },
)
