"""fedsilo tasks."""
