"""The scheduler kernel: cron, interval and one-shot schedules that fire actions."""
