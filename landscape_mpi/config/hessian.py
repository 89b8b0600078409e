"""`HessianConfig`: everything that determines the numbers of a Hessian file (`landscape-mpi hessian`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.hub import checkpoint_of_model
from landscape_mpi.config.options import check_choices, comma_join, comma_tuple, literal_values, option
from landscape_mpi.config.surface import DEFAULT_TASK, Device, GroupOptions, Loss, Split, check_task

#: Arithmetic of the Hessian products (not the evaluation precisions fp32/tf32/bf16 of a surface).
HessianDtype = Literal["float32", "float64"]
HESSIAN_DTYPES: tuple[HessianDtype, ...] = literal_values(HessianDtype)
#: Which curvature matrix of the mean loss (docs/method.md#curvature-operators): the Hessian, the generalized
#: Gauss-Newton J^T H_out J, the Fisher (labels sampled from the model, seeded), the empirical Fisher (data labels).
Curvature = Literal["hessian", "ggn", "fisher", "empirical-fisher"]
CURVATURES: tuple[Curvature, ...] = literal_values(Curvature)
#: Diagonal blocks whose spectra are computed too: none, one per parameter tensor, one per module.
Blocks = Literal["none", "tensor", "module"]
BLOCK_MAPS: tuple[Blocks, ...] = literal_values(Blocks)


DATA, ANALYSES, RUN = "model and data", "analyses", "run"


@dataclass(frozen=True)
class HessianConfig:
    """Everything that determines the numbers in a Hessian file (stored in it as JSON, but `overwrite`);
    each field is its `landscape-mpi hessian` option."""

    model: str = option(help="zoo name (landscape-mpi models), package.module:factory, or hf:FOLDER (a "
                             "save_pretrained folder or a repo id in the local Hub cache)", group=DATA)
    checkpoint: str = option(help="a checkpoint, or a quoted glob 'DIR/epoch_*.pt': one row per file (default for "
                                  "--model hf:...: its folder)", group=DATA, default_from=checkpoint_of_model)
    out: str = option(help="the Hessian file (.h5)", group=RUN)
    dataset: str = option("digits", help="digits (embedded), mnist1d, cifar10, or package.module:factory",
                          group=DATA)
    data_root: str | None = option(None, help="folder holding cifar-10-batches-py/ (never downloaded)", group=DATA)
    samples: int | None = option(None, help="a deterministic subset of N samples per split, seeded by --seed "
                                            "(default: all)", group=DATA)
    splits: tuple[Split, ...] = option(("train",), help="train, test or train,test: the loss is the mean over "
                                                        "the samples of these splits pooled",
                                       parse=comma_tuple, format=comma_join, group=DATA)
    loss: Loss = option("ce", help="ce or mse, as in surface (--task classify)", group=DATA)
    task: str = option(DEFAULT_TASK, help="classify, lm, regress or package.module:factory, as in surface: the "
                                          "Hessian of the task's mean loss (sum / count)", group=DATA)
    batch_size: int = option(1024, help="samples per double-backprop batch (memory: about 3x a forward pass of "
                                        "this many samples)", group=DATA)
    precision: HessianDtype = option("float32", help="float32: the model as trained; float64: model and data "
                                                     "cast to float64 (slower, for exact comparisons)", group=DATA)
    curvature: Curvature = option("hessian", help="the matrix analysed: hessian, ggn (generalized Gauss-Newton "
                                                  "J^T H_out J), fisher (labels sampled from the model, seeded by "
                                                  "--fisher-seed) or empirical-fisher (the data's labels)",
                                  group=ANALYSES)
    fisher_seed: int | None = option(None, help="seeds the labels --curvature fisher samples from the model "
                                                "(required with it)", group=ANALYSES)
    blocks: Blocks = option("none", help="also the top eigenvalue and trace of every diagonal block: one per "
                                         "parameter tensor (tensor) or per module (module)", group=ANALYSES)
    top_k: int = option(5, help="largest eigenvalues to compute (ARPACK which='LA')", group=ANALYSES)
    store_vectors: int | None = option(None, help="eigenvectors stored per row, the largest ones (default: 2, "
                                                   "or --top-k if smaller; 2 for surface --directions hessian)",
                                       group=ANALYSES)
    tol: float = option(1e-6, help="ARPACK relative tolerance of each eigenvalue", group=ANALYSES)
    maxiter: int = option(1000, help="ARPACK restart limit per eigsh call", group=ANALYSES)
    trace_probes: int = option(100, help="Rademacher probes of the Hutchinson trace (0: skip)", group=ANALYSES)
    slq_runs: int = option(10, help="stochastic Lanczos quadrature runs (0: skip)", group=ANALYSES)
    slq_steps: int = option(80, help="Lanczos steps per SLQ run (at most the number of parameters)",
                            group=ANALYSES)
    slq_sigma: float = option(0.01, help="Gaussian broadening of the density, as a fraction of the spectrum's "
                                         "width (max - min Ritz value)", group=ANALYSES)
    slq_grid: int = option(2000, help="density grid points", group=ANALYSES)
    adaptive_rho: float = option(0.05, help="average adaptive rise (mean loss rise over random filter-scaled "
                                            "perturbations, a lower bound of ASAM's worst case): relative "
                                            "perturbation size per filter", group=ANALYSES)
    adaptive_samples: int = option(20, help="average adaptive rise: random perturbations (0: skip)", group=ANALYSES)
    seed: int = option(0, help="seeds the --samples subset, ARPACK's start vector, the probes and the "
                               "perturbations", group=ANALYSES)
    overwrite: bool = option(False, help="replace an existing --out (how to run, not a setting of the numbers: "
                                         "not stored)", group=RUN)

    def __post_init__(self) -> None:
        check_choices(self)
        check_task(self.task, self.loss)
        if self.checkpoint is None:
            raise UserError("--checkpoint is required: a checkpoint file, a quoted glob of them, or a save_pretrained "
                            "folder (with --model hf:FOLDER it defaults to the folder)")
        if not self.splits:
            raise UserError(f"--splits {','.join(self.splits)}: choose train, test or train,test")
        positive = {"--batch-size": self.batch_size, "--top-k": self.top_k, "--maxiter": self.maxiter,
                    "--slq-steps": self.slq_steps, "--slq-grid": self.slq_grid}
        for flag, value in positive.items():
            if value < 1:
                raise UserError(f"{flag} {value}: must be at least 1")
        for flag, value in {"--trace-probes": self.trace_probes, "--slq-runs": self.slq_runs,
                              "--adaptive-samples": self.adaptive_samples}.items():
            if value < 0:
                raise UserError(f"{flag} {value}: must be 0 (skip) or more")
        if self.samples is not None and self.samples < 1:
            raise UserError(f"--samples {self.samples}: must be at least 1")
        if self.store_vectors is None:  # frozen: the resolved default is what the file records
            object.__setattr__(self, "store_vectors", min(2, self.top_k))
        if not 0 <= self.store_vectors <= self.top_k:
            raise UserError(f"--store-vectors {self.store_vectors}: must be between 0 and --top-k {self.top_k}")
        if self.curvature == "fisher" and self.fisher_seed is None:
            raise UserError("--curvature fisher samples labels from the model: add --fisher-seed N (any integer)")
        if self.curvature != "fisher" and self.fisher_seed is not None:
            raise UserError(f"--fisher-seed: only --curvature fisher samples labels; drop it with --curvature "
                            f"{self.curvature}")
        if self.curvature == "fisher" and self.task == DEFAULT_TASK and self.loss == "mse":
            raise UserError("--curvature fisher with --loss mse: the softmax mean squared error is no likelihood to "
                            "sample labels from; use --curvature ggn or empirical-fisher, or --loss ce")
        if not (self.tol >= 0 and self.slq_sigma > 0 and self.adaptive_rho > 0):
            raise UserError("--tol must be >= 0, --slq-sigma and --adaptive-rho > 0")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["splits"] = list(self.splits)
        del d["overwrite"]
        if d["task"] == DEFAULT_TASK:  # a classifier's stored config stays what it was before tasks existed
            del d["task"]
        for key, default in (("curvature", "hessian"), ("fisher_seed", None), ("blocks", "none")):
            if d[key] == default:  # likewise a Hessian file's config stays what it was before the other operators
                del d[key]
        return d


@dataclass(frozen=True)
class HessianRun(GroupOptions):
    """How `landscape-mpi hessian` runs (changes no number)."""

    device: Device = option("auto", help="auto: this rank's GPU if any, else the CPU", group=RUN)
    threads: int | None = option(None, help="torch CPU threads per rank (default: the rank's CPU set, or the "
                                            "node's cores divided among its ranks)", group=RUN)

    def __post_init__(self) -> None:
        check_choices(self)
        self.check_group_options()
        if self.ranks_per_point > 1 and self.group_mode != "shard":
            raise UserError(f"--group-mode {self.group_mode}: hessian groups shard the model; without "
                            f"--ranks-per-point the ranks already divide the data")
