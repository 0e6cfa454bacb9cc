"""Privacy maths: secure aggregation masks, DP clipping and noise, accounting."""
