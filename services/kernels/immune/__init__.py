"""Immune kernel: metrics, anomaly detection and learned remediation (port 8131)."""
