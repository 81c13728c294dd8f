"""The one shared runtime of every Grace server: bootstrap, health, reflection, telemetry,
errors, config, storage and signing."""
