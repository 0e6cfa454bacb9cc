"""Averaged models: scikit-learn parameters combined across silos."""
