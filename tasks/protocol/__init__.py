"""Messages between silos and the coordinator."""
