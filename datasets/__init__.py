"""fedsilo datasets."""
