"""What the relay tells about itself: the log lines, /metrics, the live sessions' view, and
--workers' gathering of both."""
