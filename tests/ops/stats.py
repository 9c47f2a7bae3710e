"""Chi-square helpers for the distribution tests of the random ops."""
import torch


def chi2_pvalue(stat: float, dof: int) -> float:
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def chi2_test(counts: torch.Tensor, p: torch.Tensor) -> float:
    """p-value of observed counts against probabilities p."""
    expect = counts.sum() * p
    return chi2_pvalue(float(((counts - expect) ** 2 / expect).sum()), p.numel() - 1)


def power_against(N: int, p: torch.Tensor, q: torch.Tensor) -> float:
    """p-value the same test would give, on average, to N draws from a WRONG distribution q:
    the statistic's mean is then dof + N * sum((q - p)^2 / p)."""
    return chi2_pvalue(p.numel() - 1 + N * float(((q - p) ** 2 / p).sum()), p.numel() - 1)
