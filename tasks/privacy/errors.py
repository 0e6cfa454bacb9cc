"""Errors of the privacy maths, each a type with a reason (see fedsilo.errors)."""

from __future__ import annotations

from fedsilo.errors import FedsiloError


class SecureAggregationError(FedsiloError):
    """Masked updates cannot be combined: wrong round, roster, length or range."""


class FixedPointRangeError(SecureAggregationError):
    """A value cannot be encoded in the fixed-point ring without overflow."""


class SiloDropoutError(SecureAggregationError):
    """Silos of the roster sent no masked update: the round must be retried."""

    def __init__(self, missing: tuple[int, ...], roster: tuple[int, ...]) -> None:
        super().__init__(
            f"silos {list(missing)} of roster {list(roster)} dropped out after "
            "masking; their masks do not cancel, retry with the silos present"
        )
        self.missing = missing
        self.roster = roster


class PrivacyBudgetExceededError(FedsiloError):
    """Running another round would spend more than the privacy budget."""

    def __init__(self, epsilon: float, budget: float, rounds: int) -> None:
        super().__init__(
            f"round {rounds} would spend epsilon={epsilon:.4g}, "
            f"over the budget of {budget:.4g}"
        )
        self.epsilon = epsilon
        self.budget = budget
        self.rounds = rounds
