"""Boosted trees grown from the silos' gradient/hessian histograms."""
