"""What ``fedsilo compare`` computes and shows: variants, tables, reports."""
