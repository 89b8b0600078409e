"""`HessianConfig`: everything that determines the numbers of a Hessian file (`landscape-mpi hessian`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.surface import LOSSES, SPLITS

#: Arithmetic of the Hessian products (not the evaluation precisions fp32/tf32/bf16 of a surface).
HESSIAN_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class HessianConfig:
    """Everything that determines the numbers in a Hessian file (stored in it as JSON)."""

    model: str
    """Zoo name or package.module:factory."""
    checkpoint: str
    """A checkpoint path, or a glob ('DIR/epoch_*.pt'): one row per matching file."""
    out: str
    """The Hessian file (.h5)."""
    dataset: str = "digits"
    data_root: str | None = None
    samples: int | None = None
    """A deterministic subset of N samples per split (seeded by `seed`); None: all."""
    splits: tuple[str, ...] = ("train",)
    """The loss is the mean over the samples of all these splits together."""
    loss: str = "ce"
    batch_size: int = 1024
    """Samples per double-backprop batch (memory: about 3x a forward pass of this many samples)."""
    precision: str = "float32"
    """float32: the model as trained; float64: model and data cast to float64 (exact comparisons, CPU)."""
    top_k: int = 5
    """Number of largest eigenvalues (ARPACK which='LA')."""
    store_vectors: int = 2
    """Eigenvectors stored per row (the largest ones), at most top_k; 2 for --directions hessian."""
    tol: float = 1e-6
    """ARPACK relative tolerance of each eigenvalue."""
    maxiter: int = 1000
    """ARPACK restart limit per eigsh call."""
    trace_probes: int = 100
    """Rademacher probes of the Hutchinson trace (0: no trace)."""
    slq_runs: int = 10
    """Stochastic Lanczos quadrature runs (0: no density)."""
    slq_steps: int = 80
    """Lanczos steps per SLQ run (at most the number of parameters)."""
    slq_sigma: float = 0.01
    """Gaussian broadening of the density, as a fraction of the spectrum's width (max - min Ritz value)."""
    slq_grid: int = 2000
    """Density grid points."""
    adaptive_rho: float = 0.05
    """Relative perturbation size per filter of the adaptive sharpness."""
    adaptive_samples: int = 20
    """Random perturbations of the adaptive sharpness (0: none)."""
    seed: int = 0
    """Seeds the --samples subset, ARPACK's start vector, the probes and the perturbations."""
    overwrite: bool = False
    """Replace an existing --out (how to run, not a setting of the numbers: not stored)."""

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise UserError(f"--loss {self.loss}: choose one of {', '.join(LOSSES)}")
        if not self.splits or any(s not in SPLITS for s in self.splits):
            raise UserError(f"--splits {','.join(self.splits)}: choose train, test or train,test")
        if self.precision not in HESSIAN_DTYPES:
            raise UserError(f"--precision {self.precision}: choose one of {', '.join(HESSIAN_DTYPES)}")
        positive = {"--batch-size": self.batch_size, "--top-k": self.top_k, "--maxiter": self.maxiter,
                    "--slq-steps": self.slq_steps, "--slq-grid": self.slq_grid}
        for option, value in positive.items():
            if value < 1:
                raise UserError(f"{option} {value}: must be at least 1")
        for option, value in {"--trace-probes": self.trace_probes, "--slq-runs": self.slq_runs,
                              "--adaptive-samples": self.adaptive_samples}.items():
            if value < 0:
                raise UserError(f"{option} {value}: must be 0 (skip) or more")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"--samples {self.samples}: must be at least 1")
        if not 0 <= self.store_vectors <= self.top_k:
            raise UserError(f"--store-vectors {self.store_vectors}: must be between 0 and --top-k {self.top_k}")
        if not (self.tol >= 0 and self.slq_sigma > 0 and self.adaptive_rho > 0):
            raise UserError("--tol must be >= 0, --slq-sigma and --adaptive-rho > 0")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["splits"] = list(self.splits)
        del d["overwrite"]
        return d
