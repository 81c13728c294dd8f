"""The trust kernel: identities, signed statements, web of trust, trust scores."""
