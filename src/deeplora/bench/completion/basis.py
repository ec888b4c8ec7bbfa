"""The slice's basis on a very sparse sample (docs/METHOD.md 5.2, 5.3): how well the top
singular vectors of the init gradient ``E = P_Omega(Phi)`` (up to sign), of its row- and
column-normalized form, and of ``E`` with its 3% heaviest rows and columns trimmed, find the
target's subspaces, and how far the sampling rate ``q`` read along ``E``'s plain top
direction is from ``|Omega| / (m n)``."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ...completion.data import random_low_rank, sample_entries
from ...harness.machine import table
from ...harness.matrix import SAMPLE_OFFSET
from ...subspace import normalized_top_singular, orth, principal_cosines, top_singular
from .settings import RANK, Plan

PER_ROW = 20  # observed entries per row
TRIM = 0.03  # share of the heaviest rows and columns the trimmed basis drops


def _cosines(basis: np.ndarray, truth: np.ndarray) -> list[float]:
    return principal_cosines(torch.from_numpy(np.ascontiguousarray(basis)),
                             torch.from_numpy(truth)).tolist()


def section_basis(plan: Plan) -> dict[str, Any]:
    m = plan.basis_shape
    print(f"\n== basis (m = n = {m:,}, r = {RANK}, {PER_ROW} entries per row: cosines of the "
          "principal angles between each basis and the target's column and row spaces)")
    target = random_low_rank(m, m, RANK, seed=0)
    obs = sample_entries(target, count=PER_ROW * m, seed=SAMPLE_OFFSET)
    e = sp.csr_matrix((obs.values, (obs.rows, obs.cols)), shape=(m, m))
    left = orth(torch.from_numpy(target.left)).numpy()
    right = orth(torch.from_numpy(target.right)).numpy()
    rows = np.bincount(obs.rows, obs.values**2, minlength=m)
    cols = np.bincount(obs.cols, obs.values**2, minlength=m)
    u, _, v = top_singular(e, RANK)
    bases = {"gradient (the paper's)": (u, v)}
    bases["normalized (the default)"] = normalized_top_singular(e, RANK, rows, cols)
    keep_r = (rows <= np.quantile(rows, 1 - TRIM)).astype(float)
    keep_c = (cols <= np.quantile(cols, 1 - TRIM)).astype(float)
    ut, _, vt = top_singular(sp.diags(keep_r) @ e @ sp.diags(keep_c), RANK)
    bases[f"trimmed ({TRIM:.0%} heaviest rows and columns)"] = (ut, vt)
    result: dict[str, Any] = {"shape": [m, m], "observed": len(obs), "rank": RANK}
    rows_out = []
    for name, (bu, bv) in bases.items():
        cl, cr = _cosines(bu, left), _cosines(bv, right)
        result[name] = {"cosines_left": cl, "cosines_right": cr}
        rows_out.append([name, ", ".join(f"{c:.2f}" for c in cl),
                         ", ".join(f"{c:.2f}" for c in cr)])
    print(table(["basis", "cosines, column space", "cosines, row space"], rows_out))
    u1, v1 = u[:, 0], v[:, 0]
    q = float(np.sum((u1[obs.rows] * v1[obs.cols]) ** 2))
    result["q_plain_top"], result["sampling_rate"] = q, len(obs) / (m * m)
    print(f"q along the plain top direction: {q:.3g}, against |Omega|/(mn) = "
          f"{len(obs) / (m * m):.3g}")
    return result
