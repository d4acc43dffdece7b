"""Algorithm core: numpy/torch only, never imports rclpy."""
