"""The orchestrator: durable multi-domain workflows with parallel steps, saga rollback and
signed proofs (`grace.orchestrator.v1.OrchestratorService`)."""
