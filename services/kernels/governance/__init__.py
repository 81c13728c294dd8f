"""Governance kernel: policies, decisions and approvals (port 8110)."""
