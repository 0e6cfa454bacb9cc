from __future__ import annotations

import pytest

from tasks.averaging.sampling import sample_silos

SILOS = [f"s{i}" for i in range(10)]


def test_full_fraction_takes_every_silo_in_order() -> None:
    assert sample_silos(SILOS, 1.0, 1, seed=0, round_number=3) == SILOS


def test_fraction_and_min_silos_set_the_count() -> None:
    assert len(sample_silos(SILOS, 0.3, 1, seed=0, round_number=1)) == 3
    assert len(sample_silos(SILOS, 0.1, 4, seed=0, round_number=1)) == 4


def test_sample_is_seeded_and_varies_by_round() -> None:
    first = sample_silos(SILOS, 0.3, 1, seed=7, round_number=1)
    assert first == sample_silos(SILOS, 0.3, 1, seed=7, round_number=1)
    rounds = {
        tuple(sample_silos(SILOS, 0.3, 1, seed=7, round_number=r)) for r in range(20)
    }
    assert len(rounds) > 5
    assert all(set(r) <= set(SILOS) for r in rounds)


def test_bad_fraction_is_refused() -> None:
    with pytest.raises(ValueError, match="fraction"):
        sample_silos(SILOS, 0.0, 1, seed=0, round_number=1)
