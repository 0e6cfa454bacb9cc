"""The silo side: rows read and kept at a silo, and how the coordinator reaches it."""
