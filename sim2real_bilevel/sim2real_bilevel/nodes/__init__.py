"""The ROS 2 nodes of the graph, one module per executable, each a thin adapter over core/;
``conversions`` is the one place where messages and numpy/core types meet."""
