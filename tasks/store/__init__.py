"""The checkpoint store and what reads models back from it."""
