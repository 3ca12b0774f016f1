r"""Statistics of a loss trace: :math:`\hat\lambda` from losses, by quarter, split-:math:`\hat R` and ESS.

Pure functions of a (chains, draws) array; numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ess", "lambdahat_quarters", "llc_from_losses", "rhat"]

def llc_from_losses(loss_trace: np.ndarray, init_loss: float, nbeta: float, num_burnin_steps: int = 0) -> np.ndarray:
    r"""Per-chain :math:`\hat\lambda = n\beta(\overline{L(w_t)} - L_n(w^*))` from a loss trace.

    Args:
        loss_trace: (chains, steps) losses along the chains.
        init_loss: :math:`L_n(w^*)`.
        nbeta: Inverse temperature :math:`n\beta`.
        num_burnin_steps: Leading steps left out of the mean.

    Returns:
        (chains,) array of per-chain estimates.

    >>> llc_from_losses(np.array([[1.0, 2.0, 3.0]]), 1.0, 10.0, num_burnin_steps=1)
    array([15.])
    """
    trace = np.asarray(loss_trace, dtype=np.float64)[:, num_burnin_steps:]
    return nbeta * (trace.mean(axis=1) - init_loss)


def _split_chains(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def rhat(x: np.ndarray) -> float:
    r"""Split-:math:`\hat R` of a (chains, draws) array (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4).

    Values near 1 mean the chains agree with each other and with themselves over time; above
    about 1.05 the chains have not mixed.

    Args:
        x: (chains, draws) samples, at least 4 draws.

    Returns:
        :math:`\hat R`, or NaN when there are fewer than 4 draws or no variance at all.

    >>> rhat(np.random.default_rng(0).normal(size=(4, 1000))) < 1.01
    True
    """
    if x.shape[1] < 4:
        return float("nan")
    s = _split_chains(x)
    m, n = s.shape
    within = s.var(axis=1, ddof=1).mean()
    between = n * s.mean(axis=1).var(ddof=1)
    if within == 0:
        return float("nan")
    var_plus = (n - 1) / n * within + between / n
    return float(np.sqrt(var_plus / within))


def ess(x: np.ndarray) -> float:
    r"""Effective sample size of a (chains, draws) array (BDA3 §11.5, Geyer's initial monotone sequence).

    Args:
        x: (chains, draws) samples, at least 4 draws.

    Returns:
        Effective number of independent draws across all chains (NaN for fewer than 4 draws).

    >>> 3000 < ess(np.random.default_rng(0).normal(size=(4, 1000))) <= 4000 * 1.2
    True
    """
    if x.shape[1] < 4:
        return float("nan")
    s = _split_chains(x)
    m, n = s.shape
    centred = s - s.mean(axis=1, keepdims=True)
    # Autocovariance of every chain at every lag via FFT, averaged over chains.
    size = 2 ** int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n
    within = s.var(axis=1, ddof=1).mean()
    var_plus = (n - 1) / n * within + n * s.mean(axis=1).var(ddof=1) / n if m > 1 else within
    if var_plus == 0:
        return float("nan")
    rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Geyer: sum pairs of autocorrelations while positive, forcing them to be monotone.
    pair_sums = rho[: n - n % 2].reshape(-1, 2).sum(axis=1)
    positive = np.flatnonzero(pair_sums <= 0)
    pair_sums = pair_sums[: positive[0] if positive.size else pair_sums.size]
    pair_sums = np.minimum.accumulate(pair_sums)
    tau = -1.0 + 2.0 * pair_sums.sum()
    return float(m * n / max(tau, 1.0 / np.log10(m * n)))


def lambdahat_quarters(post: np.ndarray, init_loss: float, nbeta: float) -> list[float]:
    r""":math:`\hat\lambda` of each quarter of the draws, over all chains: a climbing trace shows as a rising list.

    Args:
        post: (chains, draws) losses after burn-in.
        init_loss: :math:`L_n(w^*)`.
        nbeta: Inverse temperature :math:`n\beta`.

    Returns:
        One value per non-empty quarter (four when there are at least four draws).

    >>> lambdahat_quarters(np.array([[1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]]), 1.0, 2.0)
    [0.0, 2.0, 4.0, 6.0]
    """
    return [float(nbeta * (q.mean() - init_loss)) for q in np.array_split(post, 4, axis=1) if q.size]
