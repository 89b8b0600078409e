"""`landscape-mpi surface`: compute a loss surface into one HDF5 file, on one process or many MPI ranks.

Reads top to bottom in the order things happen. Every step that one rank can fail alone is an agree-or-fail
step (`lifecycle.agree`): a failure anywhere ends every rank with the same message, and nothing waits forever.
  1. ranks and devices (`context`); stop signals are already caught (`lifecycle.STOP`, installed by the CLI);
  2. rank 0 takes the run lock of the file (a second job on the same file is refused); every rank gets its
     placement (`groups.place`: its group of ranks per point, a group of one with --ranks-per-point 1);
  3. pre-flight on every rank: model at theta*, evaluation data, one forward per split (`inputs`);
  4. rank 0 creates the file, or checks that the existing one is this command's, to resume (`prepare`), and
     keeps what it read: the done mask, directions and coordinates;
  5. every rank gets the directions and coordinates *of the file* (rank 0 from step 4, shared with its node;
     one rank of every other node reads them) and builds its evaluation engine;
  6. the writer opens (rank 0 alone, which records the run's ranks in that open, or every group's leader
     under --io collective): rank 0's second and last open of the file;
  7. the master hands out the points not yet done to the leaders (a leader names them to its group), every
     rank evaluates, results are written durably;
  8. the writer closes; an --overwrite run that completed replaces the old file; every rank exits with the
     same status.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import numpy as np
import torch

from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE, UserError
from landscape_mpi.config.surface import RunOptions, SurfaceConfig, check_groups
from landscape_mpi.directions.base import PointSetter, space_keys
from landscape_mpi.files import reader, store
from landscape_mpi.runtime import scheduler as sched
from landscape_mpi.runtime.comm import mpi_communicator
from landscape_mpi.runtime.context import RunContext, make_context
from landscape_mpi.runtime.faults import BatchHooks
from landscape_mpi.runtime.groups import ALONE, Followers, RankGroup, close_process_group, follow, place
from landscape_mpi.runtime.lifecycle import STOP, StopRequested, agree
from landscape_mpi.runtime.progress import Progress
from landscape_mpi.runtime.sharing import node_comm, share_per_node
from landscape_mpi.surface.inputs import Inputs, check_fit, load_inputs, read_inputs, streams_shards
from landscape_mpi.surface.prepare import Opened, Prepared, SurfaceFileKind, finish_overwrite, prepare

#: ARPACK restarts allowed for each eigenvalue of a curvature map point.
EIG_MAXITER = 1000


def log(ctx: RunContext, message: str) -> None:
    if ctx.is_master:
        print(f"landscape-mpi: {message}", file=sys.stderr, flush=True)


def run_surface(config: SurfaceConfig, options: RunOptions, ctx: RunContext | None = None,
                job: Callable[[SurfaceConfig, RunOptions, RunContext], SurfaceJob] | None = None) -> int:
    """Compute (or resume) the surface; returns the process exit code (0 complete, 75 stopped, resumable).

    `job`: builds the job (default `SurfaceJob`; the path job, surface/paths.py, is one with another file kind).
    Stop signals must already be caught (`lifecycle.STOP`, installed by `lifecycle.run_main` around every
    command)."""
    # 1. ranks and devices. make_context is collective (an MPI split); a rank that fails in it alone (a broken
    #    GPU) raises, and the CLI's guard aborts the whole job with that rank's message.
    check_groups(config, options)
    ctx = ctx or make_context(options.device, options.threads)
    ctx.faults.reached("context")
    if ctx.device.type == "cpu":
        from landscape_mpi.engine import tune_cpu_allocator

        # malloc keeps activation buffers: no page faults per batch (docs/performance.md#the-evaluation-engine);
        # not where a rank must hold no more than its shards of the model, nor more than a batch of the data
        tune_cpu_allocator(keep_freed=bool(streams_shards(config, options)) and not options.stream_data)
    comm = ctx.comm
    if options.io == "collective":
        agree(comm, check_collective_io, ctx.rank)

    # 2. rank 0 holds FILE.h5.lock for the whole run: a second job on the same file is refused.
    def take_lock():
        ctx.faults.reached("lock")
        return store.RunLock(options.out) if ctx.is_master else None

    lock = agree(comm, take_lock, ctx.rank)
    try:
        return (job or SurfaceJob)(config, options, ctx).run()
    finally:
        # a group's torch.distributed process group is torn down before the interpreter exits: gloo's worker
        # threads must not outlive it (they abort the process at exit otherwise)
        close_process_group()
        if lock is not None:
            lock.release()


class SurfaceJob:
    """Steps 3 to 8 of the job, one method each, with what they share: the run (`config`, `options`, `ctx`),
    the node's communicator and this rank's placement (its group of ranks per point: a group of one with
    --ranks-per-point 1). Every rank reaches every step (rank 0 alone reaches `master`, its part of step 7)."""

    def __init__(self, config: SurfaceConfig, options: RunOptions, ctx: RunContext) -> None:
        self.config, self.options, self.ctx = config, options, ctx
        self.file = SurfaceFileKind(config)  # the file's kind: its directions, grid, identity and creation
        self.node = node_comm(ctx.comm)  # one rank per node reads the inputs; the node's other ranks receive them
        self.group = place(ctx, options.ranks_per_point, options.group_mode, options.group_timeout, self.node)
        if self.group.size > 1:
            log(ctx, f"{ctx.size // self.group.size} group(s) of {self.group.size} ranks per point, --group-mode "
                     f"{self.group.mode}, {self.group.backend}")

    def run(self) -> int:
        inputs = self.preflight()
        opened, prepared = self.prepare(inputs)
        if prepared.todo == 0:
            self.finish(prepared)
            log(self.ctx, f"{self.options.out} is complete: nothing to compute")
            return EXIT_COMPLETE
        evaluator = self.evaluator(inputs, opened, prepared)
        writer = self.open_writer(prepared)
        if self.compute(evaluator, writer, opened) != sched.STATUS_COMPLETE:
            return EXIT_RESUMABLE
        self.finish(prepared)
        if prepared.path != self.options.out:
            log(self.ctx, f"the new surface replaced {self.options.out}")
        return EXIT_COMPLETE

    def preflight(self) -> Inputs:
        """3. Nothing is written before every rank has its model and data and they fit. The node's first rank
        reads the files (a node collective, reached by every rank: nothing before it can fail); each rank then
        checks what it got inside the agree-or-fail step."""
        config, options, ctx = self.config, self.options, self.ctx
        whole = streams_shards(config, options)  # '': no rank ever holds the whole model (--group-mode shard)
        if self.group.shards:
            log(ctx, "each rank builds only its shards (theta* mapped from the checkpoint, directions written and "
                     "read tensor by tensor)" if not whole else f"each rank builds the whole model first ({whole})")
        read = share_per_node(self.node, lambda: read_inputs(config, options.stream_data, sharded=not whole))

        def preflight() -> Inputs:
            ctx.faults.reached("preflight")
            return load_inputs(config, read.get())

        return agree(ctx.comm, preflight, ctx.rank)

    def prepare(self, inputs: Inputs) -> tuple[Opened | None, Prepared]:
        """4. The file: created complete, or checked to be this command's. Returns what rank 0's file step read
        (or wrote) of the file (None on the other ranks), and the outcome every rank gets."""
        ctx = self.ctx

        def file_step() -> Prepared | None:
            ctx.faults.reached("file")
            return prepare(self.file, self.options, inputs) if ctx.is_master else None

        mine = agree(ctx.comm, file_step, ctx.rank)
        prepared = ctx.comm.bcast(mine.broadcastable() if mine is not None else None, root=0)
        log(ctx, prepared.message)
        return (mine.opened if mine is not None else None), prepared

    def evaluator(self, inputs: Inputs, opened: Opened | None, prepared: Prepared) -> GridEvaluator:
        """5. Directions and coordinates from the file (the source of truth on every rank and resume), and the
        engine (`make_engine` logs the one it chose)."""
        ctx = self.ctx
        stored = self.stored(inputs, opened, prepared.path)

        def engine_step() -> GridEvaluator:
            ctx.faults.reached("engine")
            return self.make_evaluator(inputs, stored())

        evaluator = agree(ctx.comm, engine_step, ctx.rank)
        if self.group.shards:
            # the engine holds this rank's shards: let go of the whole model and directions read for the set-up
            inputs.model, inputs.theta = None, None
            if opened is not None:
                opened.inputs = None
        if self.config.eig:
            log(ctx, "eig_max and eig_min at every point (ARPACK on Hessian-vector products, one point per call)")
        return evaluator

    def stored(self, inputs: Inputs, opened: Opened | None, path: str) -> Callable[[], tuple]:
        """How this rank gets the file's (directions, coordinates): rank 0 has them from its file step (shared
        with its node), the first rank of every other node reads them; a member of a group that never holds
        the whole model reads its own rows of each direction."""
        names, kind = self.file.names, self.file.kind
        if inputs.theta is None:
            return share_per_node(self.node, lambda: opened.inputs if opened is not None
                                  else reader.read_run_inputs(path, names, kind)).get
        from landscape_mpi.engine.group import shard_span

        group = self.group
        return lambda: reader.read_run_rows(path, names, lambda n: shard_span(n, group.rank, group.size), kind)

    def make_evaluator(self, inputs: Inputs, stored: tuple) -> GridEvaluator:
        """This rank's evaluator of the file's points (the path job evaluates a coefficient table instead)."""
        return GridEvaluator(self.config, self.options, inputs, stored, self.ctx, self.ctx.faults.batch_hooks(),
                             self.group)

    def open_writer(self, prepared: Prepared) -> store.ResultWriter | None:
        """6. The writer: rank 0 alone, which records the run's ranks in that open (rank 0's second and last
        open of the file), or every group's leader under --io collective (a collective open; a failure in it
        raises, and the CLI aborts the job)."""
        ctx, columns = self.ctx, store.result_columns(self.config)
        collective = self.options.io == "collective"
        hosts, devices = gather_ranks(ctx)

        def before_writer() -> None:
            ctx.faults.reached("writer_open")
            if ctx.is_master and collective:  # a single writer records them in its own open
                store.write_run_ranks(prepared.path, hosts, devices)

        agree(ctx.comm, before_writer, ctx.rank)
        if not collective:
            return agree(ctx.comm, lambda: store.ResultWriter(prepared.path, columns, "single", ranks=(hosts, devices))
                         if ctx.is_master else None, ctx.rank)
        if not self.group.is_leader:
            return None
        # parallel HDF5 needs mpi4py's communicator (COMM_SELF for a run alone)
        return store.ResultWriter(prepared.path, columns, "collective", mpi_communicator(self.group.leaders))

    def compute(self, evaluator: GridEvaluator, writer: store.ResultWriter | None, opened: Opened | None) -> str:
        """7. The master hands points to ranks (or to groups: their leaders); a group's other members evaluate
        what their leader names. 8. The writer closes (a collective close under --io collective: every writing
        rank reaches it, the run having ended the same way on every rank; an exception aborts the job instead).
        Returns the run's status."""
        ctx, options, group = self.ctx, self.options, self.group
        collective = options.io == "collective"
        sink = sched.ResultSink(writer.write if writer else None, len(store.result_columns(self.config)),
                                options.flush_seconds)
        stats = sched.RankStats(ctx.rank, ctx.host, str(ctx.device))
        self.writer = writer  # rank 0's, where it writes: an adaptive grid's master records its rounds through it
        try:
            if not group.is_leader:
                return follow(group, evaluator, StopRequested, sched.Waiter().pause)
            if ctx.is_master:
                status = self.master(evaluator, sink, stats, opened)
            else:
                worker = sched.Worker(group.leaders, evaluator, STOP, sink if collective else None, stats,
                                      options.flush_seconds)
                evaluator.on_batch = worker.tick
                status = worker.run()
            Followers(group).end(status)
            return status
        finally:
            ctx.faults.reached("close")
            if writer is not None:
                if collective and group.leaders.Get_size() > 1:  # every rank took part in every phase: show it
                    phases = group.leaders.gather(writer.writes, root=0)
                    log(ctx, f"collective write phases per rank: {phases}")
                writer.close()

    def master(self, evaluator: GridEvaluator, sink: sched.ResultSink, stats: sched.RankStats, opened: Opened) -> str:
        """Rank 0's part of step 7: the points not done yet, in --order, to the leaders; progress and summary."""
        ctx, options = self.ctx, self.options
        todo, total, done = self.points(opened)
        log(ctx, f"{len(todo)} points to compute on {self.group.where()}, io={options.io}, order={options.order}, "
                 f"rank 0 on {ctx.device} with {ctx.threads} thread(s)")
        progress = Progress(total, done, options.progress_seconds)
        master = sched.Master(self.group.leaders, todo, evaluator, sink, STOP, options.chunk_size, progress.update,
                              collective=options.io == "collective", stats=stats, on_tick=progress.partial,
                              **self.rounds())
        evaluator.on_batch = master.tick  # keep serving, writing and watching for stops while rank 0 evaluates
        ctx.faults.serve_while_held(master.serve if master.has_workers else None)  # a test's gate holds rank 0
        outcome = master.run()
        ctx.faults.serve_while_held(None)
        progress.close()
        print_summary(ctx, options, outcome)
        return outcome.status

    def points(self, opened: Opened) -> tuple[np.ndarray, int, int]:
        """The points to hand out (in --order), and the points of the run in all and done already (progress)."""
        todo = sched.point_order(opened.done.shape, opened.done, self.options.order)
        return todo, int(opened.done.size), int(opened.done.size) - len(todo)

    def rounds(self) -> dict:
        """How the master gets more points than `points` (an adaptive grid's rounds: `sched.Master`'s refill and
        on_results); a regular grid has none."""
        return {}

    def finish(self, prepared: Prepared) -> None:
        """An --overwrite run that completed replaces the old file (rank 0, agreed by every rank)."""
        ctx = self.ctx
        agree(ctx.comm, lambda: finish_overwrite(self.options, prepared.path) if ctx.is_master else None, ctx.rank)


# ----------------------------------------------------------------------------------- evaluation
class GridEvaluator:
    """Flat grid indices in, the file's columns out: the engine's task metrics per split at the file's exact
    coordinates, and with --metrics ...,eig the Hessian's extreme eigenvalues and the Hessian-vector products
    they took."""

    def __init__(self, config: SurfaceConfig, options: RunOptions, inputs: Inputs, stored: tuple, ctx: RunContext,
                 hooks: BatchHooks, group: RankGroup = ALONE) -> None:
        """`stored`: the file's (directions, coordinates), as `reader.read_run_inputs` gives them;
        `hooks`: this rank's per-batch and per-point fault points (`ctx.faults.batch_hooks()`); `group`: this
        rank's placement (`runtime.groups.place`; a leader names the points to its followers)."""
        from landscape_mpi.engine import make_engine

        stored, self.coords = stored
        keys = set(space_keys(inputs.model, config.dir_space))
        for axis, d in zip(config.axes, stored):
            if set(d) != keys:
                raise UserError(f"stored {axis} direction does not match the model's tensors; "
                                f"recompute with --overwrite")
        directions = [{k: torch.from_numpy(np.asarray(v)) for k, v in d.items()} for d in stored]
        self.shape = tuple(len(c) for c in self.coords)
        self.hooks = hooks
        self.on_batch: Callable[[float], None] | None = None
        self.followers = Followers(group)
        self.engine = make_engine(inputs.model, directions, inputs.data, loss=inputs.task, device=ctx.device,
                                  precision=config.precision, batch_size=options.batch_size, bn=config.bn,
                                  bn_data=inputs.bn_data, kind=options.engine, log=lambda m: log(ctx, m),
                                  group=group, theta=inputs.theta, stop=StopRequested,
                                  check_stop=None if group.is_leader else STOP.check,
                                  rule=sequential_rule(config))
        self.n_metrics = len(config.metrics) - (2 if config.eig else 0)  # the engine's metric columns
        if inputs.theta is not None:  # the pre-flight's fit check, on the sharded model (a group collective)
            for split in self.engine.data:  # on the device
                check_fit(self.engine.model, split, config, inputs.task, grad_mode=torch.no_grad)
        self.engine.on_batch = self._batch
        self.group_size = max(1, int(getattr(self.engine, "group_size", 1)))
        if config.eig or hooks.single_points:
            self.group_size = 1
        self.eig = None
        if config.eig:
            self.eig = CurvatureAtPoint(config, inputs, directions, ctx.device, options.batch_size, group)

    def _batch(self, fraction: float) -> None:
        self.hooks.on_batch()
        if self.on_batch is not None:
            self.on_batch(fraction)

    def coefficients(self, flats: np.ndarray) -> np.ndarray:
        """The coefficients (K, n_axes) of the points numbered `flats` (flat indices of the grid, C order): the
        file's coordinates of each axis at the point's index."""
        index = np.unravel_index(np.asarray(flats, dtype=np.int64), self.shape)
        return np.stack([c[i] for c, i in zip(self.coords, index)], axis=1)

    def __call__(self, flats: np.ndarray) -> np.ndarray:
        self.hooks.before_points(len(flats))
        coords = self.coefficients(flats)
        self.followers.points(flats)
        try:
            values = np.asarray(self.engine.evaluate(coords), dtype=np.float64)
        except StopRequested as exc:  # the group agreed on a stop another member caught: this rank stops too
            STOP.request(str(exc) or "stop")
            raise
        if self.eig is not None:  # the file's column order: metrics, eig_max, eig_min, eig_iters, then --tolerance's
            n = self.n_metrics
            values = np.concatenate([values[:, :n], np.array([self.eig(p) for p in coords]), values[:, n:]], axis=1)
        self.hooks.after_points(len(flats))
        return values


class CurvatureAtPoint:
    """lambda_max, lambda_min and the Hessian-vector products spent, at theta* + sum c_i d_i, on the training
    split (the first split if train is not evaluated), BatchNorm in eval mode.

    In a group of ranks (collective over the group: every member calls it for the same point): `data` mode
    divides the split among the members (exact products, `curvature.hessian`); `shard` mode shards a float64
    copy of the model like the evaluation (products by finite differences, `curvature.sharded_hessian`)."""

    def __init__(self, config: SurfaceConfig, inputs: Inputs, directions, device: torch.device,
                 batch_size: int | None, group: RankGroup = ALONE) -> None:
        if not any(p.requires_grad for p in inputs.model.parameters()):
            raise UserError(f"--metrics eig: --model {config.model} has no trainable parameter, so no Hessian")
        split = next((d for d in inputs.data if d.name == "train"), inputs.data[0])
        self.loss = inputs.task
        self.tol = config.eig_tol
        self.batch_size = batch_size
        self.comm = group.comm  # the ranks that divide the split (`comm.SELF` for a rank alone)
        self.op = None
        if group.shards:
            from landscape_mpi.curvature.hessian import DEFAULT_BATCH_SIZE
            from landscape_mpi.curvature.sharded_hessian import ShardedHessianOperator

            self.op = ShardedHessianOperator(inputs.model, [split.to(device)], inputs.task,
                                             batch_size or DEFAULT_BATCH_SIZE, group.comm, device, torch.float64)
            self.setter = self.op.point_setter(directions)
            return
        self.model = copy.deepcopy(inputs.model).to(device).eval()
        self.setter = PointSetter(self.model, [{k: v.to(device) for k, v in d.items()} for d in directions])
        self.data = split.to(device)

    def __call__(self, point: np.ndarray) -> tuple[float, float, float]:
        from landscape_mpi.curvature.hessian import eig_extremes, operator_extremes

        self.setter.set([float(c) for c in point])
        if self.op is not None:
            top, bottom, products = operator_extremes(self.op, tol=self.tol, maxiter=EIG_MAXITER)
            return float(top), float(bottom), float(products)
        kwargs = {"batch_size": self.batch_size} if self.batch_size else {}
        top, bottom, products = eig_extremes(self.model, self.data, self.loss, tol=self.tol, maxiter=EIG_MAXITER,
                                             comm=self.comm, **kwargs)
        return float(top), float(bottom), float(products)


# ------------------------------------------------------------------------------------------ helpers
def sequential_rule(config: SurfaceConfig):
    """The stopping rule of --tolerance (`engine.sequential.SequentialRule`; its order seeded by --seed), or None
    for exact full passes."""
    if config.tolerance is None:
        return None
    from landscape_mpi.engine.sequential import SequentialRule

    return SequentialRule(config.tolerance, config.min_samples, config.tolerance_block, config.seed)


def check_collective_io() -> None:
    if not store.parallel_hdf5():
        raise UserError("--io collective needs h5py built with parallel HDF5 (h5py.get_config().mpi is False): "
                        "conda install -c conda-forge 'h5py=*=mpi*', or build it: CC=mpicc HDF5_MPI=ON "
                        "pip install --no-binary=h5py --no-build-isolation h5py (see README); or use --io single")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index} {torch.cuda.get_device_name(device)}"
    return "cpu"


def gather_ranks(ctx: RunContext) -> tuple[list[str], list[str]]:
    """(hosts, device names) of every rank, on every rank (collective)."""
    mine = (ctx.host, device_name(ctx.device))
    everyone = ctx.comm.allgather(mine)
    return [h for h, _ in everyone], [d for _, d in everyone]


def print_summary(ctx: RunContext, options: RunOptions, outcome: sched.Outcome) -> None:
    lines = ["per-rank summary:"] + [s.line() for s in outcome.stats]
    print("\n".join(lines), file=sys.stderr, flush=True)
    if outcome.status == sched.STATUS_COMPLETE:
        log(ctx, f"complete: {options.out}")
    else:
        log(ctx, f"stopped early ({outcome.stop_reason}); every finished point is in the file. "
                 f"Rerun the same command to resume (exit code {EXIT_RESUMABLE}).")
