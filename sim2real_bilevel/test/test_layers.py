"""The package's layers import one way: core <- graph <- nodes, tools <- cli.  core is the
algorithm (numpy/torch, no ROS); graph describes the node graph (plain data); nodes are ROS
adapters over core; tools are the launcher and the report; cli is the command line."""
import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / 'sim2real_bilevel'
PACKAGE = 'sim2real_bilevel'

FORBIDDEN = {
    'core': ('sim2real_bilevel.nodes', 'sim2real_bilevel.tools', 'sim2real_bilevel.cli', 'sim2real_bilevel.graph',
             'rclpy', 'launch', 'launch_ros'),
    'graph': ('sim2real_bilevel.nodes', 'sim2real_bilevel.tools', 'sim2real_bilevel.cli', 'rclpy'),
    'nodes': ('sim2real_bilevel.tools', 'sim2real_bilevel.cli'),
    'tools': ('sim2real_bilevel.cli',),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved), function-level
    (lazy) imports included."""
    name = module_name(path)
    package = name if path.name == '__init__.py' else name.rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - (node.level - 1)]
                prefix = '.'.join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            found.add(prefix)
            found.update(f'{prefix}.{alias.name}' for alias in node.names)
    return found


def layer_of(path: Path) -> str:
    relative = path.relative_to(SOURCE).parts
    return relative[0] if len(relative) > 1 else path.stem


def test_no_import_runs_against_the_layers():
    violations = []
    for path in sorted(SOURCE.rglob('*.py')):
        forbidden = FORBIDDEN.get(layer_of(path), ())
        for imported in imports_of(path):
            if any(imported == f or imported.startswith(f + '.') for f in forbidden):
                violations.append(f'{path.relative_to(SOURCE)} imports {imported}')
    assert not violations, '\n'.join(violations)


def test_the_check_sees_relative_and_lazy_imports():
    imported = imports_of(SOURCE / 'nodes' / 'outer_optimizer.py')
    assert any(name.startswith('sim2real_bilevel.core') for name in imported)
    assert 'rclpy' in {name.split('.')[0] for name in imported}
