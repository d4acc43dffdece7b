"""package.xml declares every ROS package the code imports (rosdep and colcon read it)."""
import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
ROS_PACKAGE = re.compile(r'^([a-z0-9_]+_(msgs|srvs|interfaces)|rclpy|ament_index_python|launch|launch_ros)$')


def imported_ros_packages() -> dict[str, str]:
    """{top-level ROS package: a file that imports it} over the package's Python sources."""
    found = {}
    for path in sorted((PACKAGE_ROOT / 'sim2real_bilevel').rglob('*.py')) + sorted((PACKAGE_ROOT / 'launch').glob('*.py')):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split('.')[0]
                if ROS_PACKAGE.match(top):
                    found.setdefault(top, str(path.relative_to(PACKAGE_ROOT)))
    return found


def test_every_imported_ros_package_is_an_exec_depend():
    declared = {element.text.strip() for element in ElementTree.parse(PACKAGE_ROOT / 'package.xml').getroot()
                if element.tag in ('exec_depend', 'depend')}
    imported = imported_ros_packages()
    assert {'rclpy', 'std_msgs', 'sim2real_bilevel_interfaces'} <= set(imported)      # the scan sees imports
    missing = {name: where for name, where in imported.items() if name not in declared}
    assert not missing, f'imported but not declared in package.xml: {missing}'
