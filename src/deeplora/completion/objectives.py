"""The three recovery problems of docs/METHOD.md 1 as losses of the end-to-end matrix f.

Loss normalisation (one for all problems): the plain sum

    l(f) = 1/2 * sum_k (<A_k, f> - y_k)^2,

over observed entries (completion: ``A_k = e_i e_j^T``), all entries (factorization) or
Gaussian measurements (sensing). The paper's code takes the mean over all m*n entries with
step ``eta``; that is this loss with step ``eta / (m n)``, so the paper's ``eta = 5e-3 m n``
is our ``lr = 5e-3``.

Each objective gives the loss and its gradient ``R = grad_f l`` in two forms:

- :meth:`Objective.dense` for a dense ``f`` (the wide network);
- :meth:`Objective.low_rank` for ``f = A V^T`` given by its factors, returning ``R V`` and
  ``R^T A``. For completion this never forms an m x n matrix: predictions on Omega are one
  sampled dense-dense product (SDDMM) and ``R V``, ``R^T A`` two sparse-dense products
  (SpMM) on CSR matrices, so a step costs O(|Omega| k).

Completion can also carry row and column offsets learned jointly with ``f``
(:mod:`deeplora.completion.offsets`): the prediction is then ``mu + b_i + c_j + f_ij``, and
every evaluation of the loss first refits the offsets by one exact sweep to the values minus
``f``, so the loss and ``R`` are those of ``f`` with the offsets at their current optimum.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..errors import UserError
from .data import CsrPattern, LowRankMatrix, Observations
from .offsets import DEFAULT_OFFSET_REG, Offsets


def entries_fingerprint(rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> list[float]:
    """Count, sum, sum of squares and index-weighted sums of entries: order-free sums that
    identify a table (a resumed run checks them), and add up over shares of it."""
    v = np.asarray(values, dtype=np.float64)
    r = np.asarray(rows, dtype=np.float64) + 1
    c = np.asarray(cols, dtype=np.float64) + 1
    return [float(len(v)), float(v.sum()), float(v @ v), float(r @ v), float(c @ v),
            float(r @ c)]


# torch warns once that CSR support is "beta"; the operations used here are tested.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


class Objective(ABC):
    """A loss of the end-to-end matrix ``f`` (m x n)."""

    shape: tuple[int, int]

    @abstractmethod
    def dense(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, grad_f)`` for a dense ``f``."""

    @abstractmethod
    def low_rank(
        self, a: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, R v, R^T a)`` for ``f = a v^T``, where ``R = grad_f l``."""

    @abstractmethod
    def init_gradient(self, scale: float) -> np.ndarray | sp.csr_matrix:
        """``grad_f l`` at ``f = scale * J`` (J the m x n partial identity), as a dense
        array or a scipy.sparse matrix."""

    def init_energies(self, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Row and column sums of squares of :meth:`init_gradient` (for the normalized basis,
        :func:`deeplora.subspace.normalized_top_singular`)."""
        squares = np.asarray(self.init_gradient(scale)) ** 2  # dense here; sparse: overridden
        return squares.sum(axis=1), squares.sum(axis=0)

    @abstractmethod
    def transpose(self) -> Objective:
        """The same problem for ``f^T``."""

    @abstractmethod
    def to(self, dtype: torch.dtype) -> Objective:
        """A copy whose tensors have ``dtype``."""

    @abstractmethod
    def target_scale(self) -> float:
        """An estimate of the top singular value of the target, for choosing a step."""

    @abstractmethod
    def __len__(self) -> int:
        """How many numbers the loss compares (observed entries, all entries or
        measurements): what bounds the rank that can be learned."""

    @abstractmethod
    def fingerprint(self) -> list[float]:
        """Order-free sums that identify the data (:func:`entries_fingerprint`)."""

    @property
    @abstractmethod
    def sampling_rate(self) -> float:
        """How much of a rank-one change of f the loss sees (about |Omega|/(m n) for
        uniformly sampled completion, 1 for factorization)."""


# --------------------------------------------------------------------------- completion
class Completion(Objective):
    """``l = 1/2 sum_{(i,j) in Omega} (f_ij - Phi_ij)^2`` over observed entries.

    With ``offsets=True`` the prediction is ``mu + b_i + c_j + f_ij``, the offsets refit
    (ridge penalty ``offset_reg``, in observations) before every evaluation of the loss; they
    start at their fit to the values (see the module docstring).
    """

    def __init__(self, obs: Observations, dtype: torch.dtype = torch.float64, *,
                 offsets: bool = False, offset_reg: float = DEFAULT_OFFSET_REG) -> None:
        self.obs = obs
        self.shape = obs.shape
        self.dtype = dtype
        m, n = obs.shape
        self._csr = CsrPattern.of(obs.rows, obs.cols, (m, n))  # entries kept in CSR order
        rows, cols = self._csr.rows, self._csr.cols
        self.rows = torch.from_numpy(rows)
        self.cols = torch.from_numpy(cols)
        self.values = torch.from_numpy(obs.values[self._csr.order]).to(dtype)
        # The transpose in CSR order: a permutation of the same entries.
        self._csr_t = CsrPattern.of(cols, rows, (n, m))
        self._perm_t = torch.from_numpy(self._csr_t.order)
        self._top: tuple[float, float] | None = None
        self._pattern = self._csr.torch(torch.zeros(len(rows), dtype=dtype))
        self.offsets: Offsets | None = None
        if offsets:
            self.offsets = Offsets(self.rows, self.cols, self.shape, offset_reg, self._reduce)
            self.offsets.fit(self.values)

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of ``x`` over every process holding entries (one process: ``x``)."""
        return x

    def __len__(self) -> int:
        return len(self.values)

    def fingerprint(self) -> list[float]:
        local = entries_fingerprint(self.rows.numpy(), self.cols.numpy(),
                                    self.values.double().numpy())
        return [float(x) for x in self._reduce(torch.tensor(local, dtype=torch.float64))]

    def _target(self) -> torch.Tensor:
        """What ``f`` fits on Omega (CSR order): the values minus the current offsets."""
        if self.offsets is None:
            return self.values
        return self.values - self.offsets.values().to(self.dtype)

    def _refit_offsets(self, pred: torch.Tensor) -> torch.Tensor:
        """One sweep of the offsets towards the values minus ``pred``; the new target."""
        if self.offsets is not None:
            self.offsets.sweep(self.values - pred)
        return self._target()

    def observed_norm(self) -> float:
        """``||P_Omega(Phi)||_F`` (minus the initial offsets, if any): the scale of the
        relative training residual."""
        return float(self._target().double().norm())

    def predict(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(a v^T)_ij`` on Omega (in CSR order), one sampled product."""
        return torch.sparse.sampled_addmm(self._pattern, a, v.T, beta=0.0).values()

    def low_rank(
        self, a: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pred = self.predict(a, v)
        res = pred - self._refit_offsets(pred)
        r, r_t = self._csr.torch(res), self._csr_t.torch(res[self._perm_t])
        return 0.5 * res.dot(res), r @ v, r_t @ a

    def dense(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pred = f[self.rows, self.cols]
        res = pred - self._refit_offsets(pred)
        grad = torch.zeros_like(f)
        grad[self.rows, self.cols] = res
        return 0.5 * res.dot(res), grad

    def init_gradient(self, scale: float) -> sp.csr_matrix:
        rows, cols = self.rows.numpy(), self.cols.numpy()
        return sp.csr_matrix((self._init_residual(scale), (rows, cols)), shape=self.shape)

    def init_energies(self, scale: float) -> tuple[np.ndarray, np.ndarray]:
        squares = self._init_residual(scale) ** 2
        m, n = self.shape
        return (np.bincount(self.rows.numpy(), squares, minlength=m),
                np.bincount(self.cols.numpy(), squares, minlength=n))  # fmt: skip

    def _init_residual(self, scale: float) -> np.ndarray:
        rows, cols = self.rows.numpy(), self.cols.numpy()
        return np.where(rows == cols, scale, 0.0) - self._target().double().numpy()

    def _like(self, obs: Observations, dtype: torch.dtype, transposed: bool) -> Completion:
        """A completion of ``obs`` (this one's entries, maybe transposed) carrying this one's
        offsets as they are now."""
        other = type(self)(obs, dtype)
        if self.offsets is not None:
            state = self.offsets.state()
            if transposed:
                state = {"mu": state["mu"], "row": state["col"], "col": state["row"]}
            other.offsets = Offsets(other.rows, other.cols, other.shape, self.offsets.reg,
                                    other._reduce)
            other.offsets.load_state(state)
        return other

    def transpose(self) -> Completion:
        return self._like(self.obs.transpose(), self.dtype, transposed=True)

    def to(self, dtype: torch.dtype) -> Completion:
        return self if dtype == self.dtype else self._like(self.obs, dtype, transposed=False)

    def target_scale(self) -> float:
        """``|<P_Omega(Phi), u v^T>| / q`` with ``q = ||P_Omega(u v^T)||_F^2``, along the top
        direction ``(u, v)`` of the observed matrix read off its row- and column-normalized
        form (:func:`~deeplora.subspace.normalized_top_singular`): the least-squares scale
        of the target along that direction, and how much of it the samples see (``q = p``
        for uniform sampling, larger where rows or columns are observed unevenly). The plain
        top singular pair of a sparse sample sits on a few rows of large energy; in a
        20,000 x 20,000 rank-5 check with 20 entries per row it gave ``q = 0.7`` and a scale
        400 times too small, this one ``q = 0.0017`` (``p = 0.001``) and 0.8 times the true
        top singular value (docs/METHOD.md, "The automatic step")."""
        q, s = self._top_direction()
        return s / q

    @property
    def sampling_rate(self) -> float:
        q, _ = self._top_direction()
        return q

    def _top_direction(self) -> tuple[float, float]:
        """``(q, |<P_Omega(Phi), u v^T>|)`` for the normalized top direction ``(u, v)``."""
        if self._top is None:
            from ..subspace import normalized_top_singular

            rows, cols = self.rows.numpy(), self.cols.numpy()
            target = self._target().double().numpy()
            m, n = self.shape
            energies = (np.bincount(rows, target**2, minlength=m),
                        np.bincount(cols, target**2, minlength=n))  # fmt: skip
            u, v = normalized_top_singular(self._top_matrix(target), 1,
                                           *self._reduce_energies(*energies))
            ui, vj = u[rows, 0], v[cols, 0]
            sums = self._reduce(torch.tensor([float(target @ (ui * vj)),
                                              float(ui**2 @ vj**2)], dtype=torch.float64))
            self._top = (float(sums[1]), abs(float(sums[0])))
        return self._top

    def _top_matrix(self, target: np.ndarray) -> sp.csr_matrix | Any:
        """``P_Omega(target)`` as a matrix (or, sharded, an operator of the sum)."""
        return sp.csr_matrix((target, (self.rows.numpy(), self.cols.numpy())),
                             shape=self.shape)

    def _reduce_energies(self, rows: np.ndarray,
                         cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        both = self._reduce(torch.from_numpy(np.concatenate([rows, cols])))
        return both[: len(rows)].numpy(), both[len(rows):].numpy()


# --------------------------------------------------------------------------- factorization
class Factorization(Objective):
    """``l = 1/2 ||f - Phi||_F^2`` (every entry observed)."""

    def __init__(self, target: torch.Tensor | np.ndarray | LowRankMatrix,
                 dtype: torch.dtype = torch.float64) -> None:
        if isinstance(target, LowRankMatrix):
            target = target.to_dense()
        self.target = torch.as_tensor(np.asarray(target) if not isinstance(target, torch.Tensor)
                                      else target).to(dtype)
        if self.target.ndim != 2 or not torch.isfinite(self.target).all():
            raise UserError("the factorization target must be a finite 2-D matrix")
        self.shape = (int(self.target.shape[0]), int(self.target.shape[1]))
        self.dtype = dtype

    @property
    def sampling_rate(self) -> float:
        return 1.0

    def __len__(self) -> int:
        return self.shape[0] * self.shape[1]

    def fingerprint(self) -> list[float]:
        rows, cols = np.divmod(np.arange(len(self)), self.shape[1])
        return entries_fingerprint(rows, cols, self.target.double().numpy().ravel())

    def dense(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = f - self.target
        return 0.5 * (r * r).sum(), r

    def low_rank(
        self, a: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, r = self.dense(a @ v.T)
        return loss, r @ v, r.T @ a

    def init_gradient(self, scale: float) -> np.ndarray:
        m, n = self.shape
        return (scale * torch.eye(m, n, dtype=torch.float64) - self.target.double()).numpy()

    def transpose(self) -> Factorization:
        return Factorization(self.target.T.contiguous(), self.dtype)

    def to(self, dtype: torch.dtype) -> Factorization:
        return self if dtype == self.dtype else Factorization(self.target, dtype)

    def target_scale(self) -> float:
        return float(torch.linalg.matrix_norm(self.target.double(), ord=2))


# --------------------------------------------------------------------------- sensing
class Sensing(Objective):
    """``l = 1/2 sum_k (<A_k, f> - y_k)^2`` with measurement matrices ``A_k`` (N x m x n).

    Dense and meant for small sizes: every step forms f and contracts it with all A_k.
    """

    def __init__(self, measurements: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray,
                 dtype: torch.dtype = torch.float64) -> None:
        a = torch.as_tensor(measurements).to(dtype)
        yy = torch.as_tensor(y).to(dtype).reshape(-1)
        if a.ndim != 3 or a.shape[0] != yy.shape[0]:
            raise UserError(
                f"measurements must be (N, m, n) with N = len(y); got {tuple(a.shape)} and "
                f"{yy.shape[0]} values"
            )
        self.a, self.y = a, yy
        self.shape = (int(a.shape[1]), int(a.shape[2]))
        self.dtype = dtype
        self._flat = a.reshape(a.shape[0], -1)

    @classmethod
    def gaussian(cls, target: LowRankMatrix | np.ndarray, count: int, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> Sensing:
        """``count`` measurements with i.i.d. N(0, 1/count) entries of a known target."""
        dense = target.to_dense() if isinstance(target, LowRankMatrix) else np.asarray(target)
        rng = np.random.default_rng(seed)
        a = rng.standard_normal((count, *dense.shape)) / np.sqrt(count)
        return cls(a, np.einsum("kij,ij->k", a, dense), dtype)

    @property
    def sampling_rate(self) -> float:
        return 1.0  # Gaussian measurements scaled by 1/sqrt(N) are near-isometric

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def fingerprint(self) -> list[float]:
        y = self.y.double().numpy()
        return [*entries_fingerprint(np.zeros(len(y)), np.arange(len(y)), y),
                float(self._flat.double().sum())]

    def dense(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        res = self._flat @ f.reshape(-1) - self.y
        return 0.5 * res.dot(res), (res @ self._flat).reshape(self.shape)

    def low_rank(
        self, a: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        loss, r = self.dense(a @ v.T)
        return loss, r @ v, r.T @ a

    def init_gradient(self, scale: float) -> np.ndarray:
        m, n = self.shape
        _, r = self.to(torch.float64).dense(scale * torch.eye(m, n, dtype=torch.float64))
        return r.numpy()

    def transpose(self) -> Sensing:
        return Sensing(self.a.transpose(1, 2), self.y, self.dtype)

    def to(self, dtype: torch.dtype) -> Sensing:
        return self if dtype == self.dtype else Sensing(self.a, self.y, dtype)

    def target_scale(self) -> float:
        _, g = self.to(torch.float64).dense(torch.zeros(self.shape, dtype=torch.float64))
        return float(torch.linalg.matrix_norm(g, ord=2))


def make_objective(problem: Any, dtype: torch.dtype = torch.float64) -> Objective:
    """An :class:`Objective` from observations (completion), a dense or low-rank matrix
    (factorization), or an objective itself."""
    if isinstance(problem, Objective):
        return problem.to(dtype)
    if isinstance(problem, Observations):
        return Completion(problem, dtype)
    if isinstance(problem, (np.ndarray, torch.Tensor, LowRankMatrix)):
        return Factorization(problem, dtype)
    raise TypeError(
        f"cannot fit a {type(problem).__name__}: give Observations (completion), a matrix "
        "(factorization) or an Objective"
    )
