"""The Grace event bus: a durable event log with wildcard subscriptions and push delivery."""
