"""Byzantine-robust aggregation and update validation: pure maths over named arrays."""
