"""Federated gradient-boosted trees: pure maths, no Prefect or Dask.

Silos hold different rows of the same columns. Each tree grows from the sum of
the silos' gradient/hessian histograms over shared float32 cut points, so it is
the tree XGBoost's ``hist`` method would grow on the pooled rows with those cuts,
and the model exports as standard XGBoost JSON.

Modules: ``sketch`` (quantile summaries, cut points), ``binning``, ``objective``,
``histogram`` (kernels, exact fixed-point sums, subtraction), ``split``,
``params`` (XGBoost-named parameters), ``silo_state`` (one silo's side),
``learner`` (the coordinator's side, ``train_in_memory``), ``model`` (trees and
the numpy predictor), ``xgb_export`` (JSON, ``trees_to_dataframe`` table) and
``privacy`` (masked histogram exchanges, Gaussian noise on histogram sums).
"""
