"""fedsilo connectors."""
