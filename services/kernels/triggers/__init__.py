"""The trigger mesh: declarative rules that turn events into governed actions."""
