"""fedsilo flows."""
