"""Change data capture: the history events every state change produces."""
