"""The registry: domains, leases, health, capabilities and routing scores."""
