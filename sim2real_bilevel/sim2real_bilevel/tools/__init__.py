"""Command-line tools of the ROS layer: the pip-only launcher, the bag recorder, reports."""
