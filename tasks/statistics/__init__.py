"""Federated statistics: what a silo may send and exact merges of it."""
