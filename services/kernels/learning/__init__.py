"""The learning kernel: patterns in the outcomes of domain actions."""
