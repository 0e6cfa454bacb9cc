"""Server optimisers on the pseudo-gradient (Reddi et al. 2021) and FedProx maths.

Sign convention. ``current`` is the global model ``x_t`` the silos started
from, ``aggregated`` the (weighted or robust) average of their new models.
``delta = aggregated - current`` is Reddi et al.'s ``Delta_t``, the average
change the silos made; the *pseudo-gradient* is ``g_t = -delta = current -
aggregated``, so a gradient step ``x - lr * g`` moves along ``+delta``. Every
optimiser below returns ``current + learning_rate * direction``:

- FedAvgM (Hsu et al. 2019): ``v = momentum * v + delta``; direction ``v``.
  ``learning_rate=1, momentum=0`` is plain FedAvg (returns ``aggregated``).
- FedAdagrad: ``m = beta1 * m + (1 - beta1) * delta``; ``v = v + delta**2``.
- FedYogi:    ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)``.
- FedAdam:    ``v = beta2 * v + (1 - beta2) * delta**2``.
  For the three adaptive ones the direction is ``m / (sqrt(v) + tau)``, with
  ``m`` starting at 0 and ``v`` at ``tau**2`` and no bias correction, as in
  Reddi et al.'s Algorithm 2.

State is explicit: ``state_dict()`` gives named arrays (``"m/<tensor>"``,
``"v/<tensor>"``, ``"rounds"``) that the checkpoint store can write next to the
model; ``load_state_dict`` restores them, so a resumed run continues exactly.
Tensors named in ``exclude`` are passed through from ``aggregated`` (FedAvg);
use it for counters such as SGD's ``t_``.

Server optimisers apply to fedsilo's parameter-averaged models (sgd-*,
logistic, mlp-*). They do not apply to ``xgboost``: its trees are grown from
summed histograms and appended, there is no averaged parameter vector.

FedProx (Li et al. 2020) changes local training, not aggregation: each silo
minimises ``loss(w) + mu/2 * ||w - w_global||**2``. fedsilo applies it as a
proximal step after
every local mini-batch (``local.proximal_mu``, ``sklearn_models.train_local``)
for ``sgd-*`` and ``mlp-*``; ``logistic`` and ``xgboost`` refuse it. Which
models, how, and why not the others: docs/strategies.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from typing import ClassVar, Literal

import numpy as np

from fedsilo.errors import InconsistentUpdatesError

Params = Mapping[str, np.ndarray]
Kind = Literal["fedavgm", "fedadagrad", "fedadam", "fedyogi"]


class ServerOptimizer(ABC):
    """A server optimiser: hyperparameters plus per-tensor state arrays."""

    kind: ClassVar[str]
    slots: ClassVar[tuple[str, ...]]

    def __init__(
        self,
        initial: Params,
        *,
        learning_rate: float,
        exclude: Collection[str] = (),
    ) -> None:
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        self.learning_rate = float(learning_rate)
        self.exclude = frozenset(exclude)
        self.names = tuple(sorted(initial))
        self.rounds = 0
        self.state: dict[str, dict[str, np.ndarray]] = {
            slot: {
                name: np.full(
                    np.shape(initial[name]), self._initial(slot), dtype=np.float64
                )
                for name in self.names
                if name not in self.exclude
            }
            for slot in self.slots
        }

    def _initial(self, slot: str) -> float:
        return 0.0

    @abstractmethod
    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        """Update the state of tensor ``name`` with ``delta``; return the direction."""

    def step(self, current: Params, aggregated: Params) -> dict[str, np.ndarray]:
        """Return the new global model and advance the state by one round."""
        for label, params in (("current", current), ("aggregated", aggregated)):
            if tuple(sorted(params)) != self.names:
                raise InconsistentUpdatesError(
                    f"{label} model has tensors {sorted(params)}, expected "
                    f"{list(self.names)}"
                )
        out: dict[str, np.ndarray] = {}
        for name in self.names:
            dtype = np.asarray(current[name]).dtype
            if name in self.exclude:
                out[name] = np.array(aggregated[name], dtype=dtype)
                continue
            x = np.asarray(current[name], dtype=np.float64)
            delta = np.asarray(aggregated[name], dtype=np.float64) - x
            if delta.shape != self.state[self.slots[0]][name].shape:
                raise InconsistentUpdatesError(
                    f"tensor {name!r} has shape {delta.shape}, expected "
                    f"{self.state[self.slots[0]][name].shape}"
                )
            direction = self._direction(name, delta)
            out[name] = (x + self.learning_rate * direction).astype(dtype, copy=False)
        self.rounds += 1
        return out

    def state_dict(self) -> dict[str, np.ndarray]:
        """Return the state as named arrays (``"<slot>/<tensor>"`` and ``"rounds"``)."""
        out = {
            f"{slot}/{name}": array.copy()
            for slot, arrays in self.state.items()
            for name, array in arrays.items()
        }
        out["rounds"] = np.array(self.rounds, dtype=np.int64)
        return out

    def load_state_dict(self, state: Params) -> None:
        """Restore the state written by ``state_dict``."""
        expected = set(self.state_dict())
        if set(state) != expected:
            raise InconsistentUpdatesError(
                f"optimiser state has arrays {sorted(state)}, "
                f"expected {sorted(expected)}"
            )
        for slot, arrays in self.state.items():
            for name, array in arrays.items():
                loaded = np.asarray(state[f"{slot}/{name}"], dtype=np.float64)
                if loaded.shape != array.shape:
                    raise InconsistentUpdatesError(
                        f"optimiser state {slot}/{name} has shape {loaded.shape}, "
                        f"expected {array.shape}"
                    )
                arrays[name] = loaded.copy()
        self.rounds = int(state["rounds"])


class FedAvgM(ServerOptimizer):
    """FedAvg with server momentum: ``v = momentum * v + delta``; ``x += lr * v``."""

    kind = "fedavgm"
    slots = ("v",)

    def __init__(
        self,
        initial: Params,
        *,
        learning_rate: float = 1.0,
        momentum: float = 0.9,
        exclude: Collection[str] = (),
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        super().__init__(initial, learning_rate=learning_rate, exclude=exclude)

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        v = self.momentum * self.state["v"][name] + delta
        self.state["v"][name] = v
        return v


class _Adaptive(ServerOptimizer):
    """Shared maths of FedAdagrad, FedYogi and FedAdam: ``m / (sqrt(v) + tau)``."""

    slots = ("m", "v")

    def __init__(
        self,
        initial: Params,
        *,
        learning_rate: float = 0.1,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        exclude: Collection[str] = (),
    ) -> None:
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"beta1 and beta2 must be in [0, 1): {beta1}, {beta2}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.beta1, self.beta2, self.tau = float(beta1), float(beta2), float(tau)
        super().__init__(initial, learning_rate=learning_rate, exclude=exclude)

    def _initial(self, slot: str) -> float:
        return self.tau**2 if slot == "v" else 0.0

    @abstractmethod
    def _second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        """Return the new second-moment estimate."""

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        m = self.beta1 * self.state["m"][name] + (1.0 - self.beta1) * delta
        v = self._second_moment(self.state["v"][name], delta**2)
        self.state["m"][name], self.state["v"][name] = m, v
        direction: np.ndarray = m / (np.sqrt(v) + self.tau)
        return direction


class FedAdagrad(_Adaptive):
    """FedAdagrad: ``v = v + delta**2``."""

    kind = "fedadagrad"

    def _second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return v + squared


class FedYogi(_Adaptive):
    """FedYogi: ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)``."""

    kind = "fedyogi"

    def _second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        new: np.ndarray = v - (1.0 - self.beta2) * squared * np.sign(v - squared)
        return new


class FedAdam(_Adaptive):
    """FedAdam: ``v = beta2 * v + (1 - beta2) * delta**2``."""

    kind = "fedadam"

    def _second_moment(self, v: np.ndarray, squared: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * squared


OPTIMIZERS: dict[str, type[ServerOptimizer]] = {
    cls.kind: cls for cls in (FedAvgM, FedAdagrad, FedAdam, FedYogi)
}


def make_server_optimizer(
    kind: Kind, initial: Params, **hyperparameters: float
) -> ServerOptimizer:
    """Return the server optimiser ``kind`` initialised from the global model."""
    try:
        cls = OPTIMIZERS[kind]
    except KeyError:
        raise ValueError(
            f"unknown server optimiser {kind!r}; one of {sorted(OPTIMIZERS)}"
        ) from None
    return cls(initial, **hyperparameters)  # type: ignore[arg-type]
