"""Write test silos: contiguous slices of a train and a test frame, as Parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def write_silos(
    train: pd.DataFrame, test: pd.DataFrame, n_silos: int, out: Path
) -> list[dict[str, str]]:
    """Contiguous train slices and test slices, one pair of files per silo."""
    silos = []
    for i, (a, b) in enumerate(
        zip(
            np.array_split(np.arange(len(train)), n_silos),
            np.array_split(np.arange(len(test)), n_silos),
            strict=True,
        )
    ):
        folder = out / f"silo-{i}"
        folder.mkdir(parents=True, exist_ok=True)
        train.iloc[a].to_parquet(folder / "train.parquet", index=False)
        test.iloc[b].to_parquet(folder / "test.parquet", index=False)
        silos.append(
            {
                "name": f"silo-{i}",
                "train": str(folder / "train.parquet"),
                "test": str(folder / "test.parquet"),
            }
        )
    return silos
