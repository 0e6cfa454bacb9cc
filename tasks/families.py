"""Model families by model kind: what the one engine opens for a run.

A family is a class with ``check(spec)`` (refuse bad model parameters before
any silo work) and ``open(opening)``, which returns a
:class:`tasks.run_state.FamilyRun`. ``xgboost`` grows boosted trees; every
other kind averages scikit-learn parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from fedsilo.spec import FederationSpec
    from tasks.run_state import FamilyRun, Opening


class ModelFamily(Protocol):
    """How one group of model kinds opens a run."""

    @staticmethod
    def check(spec: FederationSpec) -> None:
        """Refuse what the spec's own validation cannot see (model parameters)."""
        ...

    @staticmethod
    def open(opening: Opening) -> FamilyRun:
        """Open the silos' state for a run and return the run's family state."""
        ...


def family_of(kind: str) -> ModelFamily:
    """Return the family that trains model ``kind``."""
    if kind == "xgboost":
        from tasks.boosting.boosted import BoostedFamily

        return BoostedFamily
    from tasks.averaging.averaged import AveragedFamily

    return AveragedFamily
