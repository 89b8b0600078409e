"""`landscape-mpi surface`: compute a loss surface into one HDF5 file, on one process or many MPI ranks.

Reads top to bottom in the order things happen. Every step that one rank can fail alone is an agree-or-fail
step (`lifecycle.agree`): a failure anywhere ends every rank with the same message, and nothing waits forever.
  1. ranks and devices (`context`); stop signals are already caught (`lifecycle.STOP`, installed by the CLI);
  2. rank 0 takes the run lock of the file (a second job on the same file is refused);
  3. pre-flight on every rank: model at theta*, evaluation data, one forward per split (`inputs`);
  4. rank 0 creates the file, or checks that the existing one is this command's, to resume (`prepare`), and
     keeps what it read: the done mask, directions and coordinates;
  5. every rank gets the directions and coordinates *of the file* (rank 0 from step 4, shared with its node;
     one rank of every other node reads them) and builds its evaluation engine;
  6. the writer opens (rank 0 alone, which records the run's ranks in that open, or every rank under
     --io collective): rank 0's second and last open of the file;
  7. the master hands out the points not yet done, every rank evaluates, results are written durably;
  8. the writer closes; an --overwrite run that completed replaces the old file; every rank exits with the
     same status.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable

import numpy as np
import torch

from landscape_mpi.runtime import scheduler as sched
from landscape_mpi.files import reader, store
from landscape_mpi.config.surface import RunOptions, SurfaceConfig, check_groups
from landscape_mpi.runtime.comm import mpi_communicator
from landscape_mpi.runtime.context import RunContext, make_context
from landscape_mpi.runtime.faults import BatchHooks
from landscape_mpi.directions.base import PointSetter, space_keys
from landscape_mpi.config.errors import EXIT_COMPLETE, EXIT_RESUMABLE, UserError
from landscape_mpi.surface.inputs import Inputs, check_fit, load_inputs, read_inputs, streams_shards
from landscape_mpi.runtime.groups import (Followers, RankGroup, check_layout, close_process_group, follow,
                                          init_process_group, make_groups)
from landscape_mpi.runtime.lifecycle import STOP, StopRequested, agree
from landscape_mpi.surface.prepare import Prepared, finish_overwrite, prepare_file
from landscape_mpi.runtime.progress import Progress
from landscape_mpi.runtime.sharing import node_comm, share_per_node

#: ARPACK restarts allowed for each eigenvalue of a curvature map point.
EIG_MAXITER = 1000


def log(ctx: RunContext, message: str) -> None:
    if ctx.is_master:
        print(f"landscape-mpi: {message}", file=sys.stderr, flush=True)


def run_surface(config: SurfaceConfig, options: RunOptions, ctx: RunContext | None = None) -> int:
    """Compute (or resume) the surface; returns the process exit code (0 complete, 75 stopped, resumable).

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
        return _run_locked(config, options, ctx)
    finally:
        # a group's torch.distributed process group is torn down before the interpreter exits: gloo's worker
        # threads must not outlive it (they abort the process at exit otherwise)
        close_process_group()
        if lock is not None:
            lock.release()


def _run_locked(config: SurfaceConfig, options: RunOptions, ctx: RunContext) -> int:
    comm = ctx.comm
    node = node_comm(comm)  # one rank per node reads the inputs; the node's other ranks receive them
    group = None
    if options.ranks_per_point > 1:  # groups of G ranks of a node, each with its torch.distributed group
        ranks_per_node = comm.allgather(node.Get_size())
        agree(comm, lambda: check_layout(ranks_per_node, options.ranks_per_point), ctx.rank)
        group = make_groups(comm, node, options.ranks_per_point)
        backend = init_process_group(group, ctx.device.type, options.group_timeout)
        log(ctx, f"{ctx.size // group.size} group(s) of {group.size} ranks per point, --group-mode "
                 f"{options.group_mode}, {backend}")

    # 3. pre-flight: nothing is written before every rank has its model and data and they fit. The node's
    #    first rank reads the files (a node collective, reached by every rank: nothing before it can fail);
    #    each rank then checks what it got inside the agree-or-fail step.
    whole = streams_shards(config, options)  # '': no rank ever holds the whole model (--group-mode shard)
    if group is not None and options.group_mode == "shard":
        log(ctx, "each rank builds only its shards (theta* mapped from the checkpoint, directions written and "
                 "read tensor by tensor)" if not whole else f"each rank builds the whole model first ({whole})")
    read = share_per_node(node, lambda: read_inputs(config, options.stream_data, sharded=not whole))

    def preflight() -> Inputs:
        ctx.faults.reached("preflight")
        return load_inputs(config, read.get())

    inputs = agree(comm, preflight, ctx.rank)

    # 4. the file: created complete, or checked to be this command's.
    def file_step() -> Prepared | None:
        ctx.faults.reached("file")
        return prepare_file(config, options, inputs) if ctx.is_master else None

    mine = agree(comm, file_step, ctx.rank)
    opened = mine.opened if mine is not None else None  # rank 0: what its file step read (or wrote) of the file
    prepared = comm.bcast(mine.broadcastable() if mine is not None else None, root=0)
    log(ctx, prepared.message)
    if prepared.todo == 0:
        agree(comm, lambda: finish_overwrite(options, prepared.path) if ctx.is_master else None, ctx.rank)
        log(ctx, f"{options.out} is complete: nothing to compute")
        return EXIT_COMPLETE

    # 5. directions and coordinates from the file (the source of truth on every rank and resume), engine. Rank 0
    #    has them from its file step (shared with its node); the first rank of every other node reads them.
    axes = list(config.axes)
    if inputs.theta is None:
        stored = share_per_node(node, lambda: opened.inputs if opened is not None
                                else reader.read_run_inputs(prepared.path, axes)).get
    else:  # each member reads its own rows of each direction
        from landscape_mpi.engine.group import shard_span

        stored = lambda: reader.read_run_rows(prepared.path, axes,  # noqa: E731
                                              lambda n: shard_span(n, group.rank, group.size))

    def engine_step() -> GridEvaluator:
        ctx.faults.reached("engine")
        return GridEvaluator(config, options, inputs, stored(), ctx, ctx.faults.batch_hooks(), group)

    evaluator = agree(comm, engine_step, ctx.rank)  # make_engine logs the engine it chose
    if group is not None and options.group_mode == "shard":
        # the engine holds this rank's shards: let go of the whole model and directions read for the set-up
        inputs.model, inputs.theta, read, stored = None, None, None, None
        if opened is not None:
            opened.inputs = None
    if config.eig:
        log(ctx, "eig_max and eig_min at every point (ARPACK on Hessian-vector products, one point per call)")

    # 6. the writer: rank 0 alone, or every rank (every group's leader) under --io collective (a collective open).
    collective = options.io == "collective"
    hosts, devices = gather_ranks(ctx)
    follower = group is not None and not group.is_leader
    sched_comm = comm if group is None else group.leaders  # the ranks that talk to the master (None: a follower)

    def before_writer() -> None:
        ctx.faults.reached("writer_open")
        if ctx.is_master and collective:  # a single writer records them in its own open
            store.write_run_ranks(prepared.path, hosts, devices)

    agree(comm, before_writer, ctx.rank)
    if collective and not follower:  # a collective open (a failure in it raises, and the CLI aborts the job)
        writer = store.ResultWriter(prepared.path, store.result_columns(config), "collective",
                                    mpi_communicator(sched_comm))  # parallel HDF5 needs mpi4py's (COMM_SELF alone)
    elif collective:
        writer = None
    else:
        writer = agree(comm, lambda: store.ResultWriter(prepared.path, store.result_columns(config), "single",
                                                        ranks=(hosts, devices)) if ctx.is_master else None, ctx.rank)

    # 7. scheduling: the master hands points to ranks (or to groups: their leaders); a group's other members
    #    evaluate what their leader names.
    sink = sched.ResultSink(writer.write if writer else None, len(store.result_columns(config)),
                            options.flush_seconds)
    stats = sched.RankStats(ctx.rank, ctx.host, str(ctx.device))
    status = sched.STATUS_STOPPED
    followers = Followers(group) if group is not None and group.is_leader else None
    try:
        if follower:
            status = follow(group, evaluator, StopRequested, sched.Waiter().pause)
        elif ctx.is_master:
            todo = sched.point_order(opened.done.shape, opened.done, options.order)
            total = int(opened.done.size)
            where = (f"{ctx.size} rank(s)" if group is None
                     else f"{sched_comm.Get_size()} group(s) of {group.size} ranks")
            log(ctx, f"{len(todo)} points to compute on {where}, io={options.io}, order={options.order}, "
                     f"rank 0 on {ctx.device} with {ctx.threads} thread(s)")
            progress = Progress(total, total - len(todo), options.progress_seconds)
            master = sched.Master(sched_comm, todo, evaluator, sink, STOP, options.chunk_size, progress.update,
                                  collective=collective, stats=stats, on_tick=progress.partial)
            # keep serving, writing and watching for stops while rank 0 evaluates a long point
            evaluator.on_batch = master.tick
            outcome = master.run()
            progress.close()
            print_summary(ctx, options, outcome)
            status = outcome.status
        else:
            worker = sched.Worker(sched_comm, evaluator, STOP, sink if collective else None, stats,
                                  options.flush_seconds)
            evaluator.on_batch = worker.tick
            status = worker.run()
        if followers is not None:
            followers.end(status)
    finally:
        # 8. close (a collective close under --io collective: every writing rank reaches it, the run having
        #    ended the same way on every rank; an exception above aborts the job instead).
        ctx.faults.reached("close")
        if writer is not None:
            if collective and sched_comm.Get_size() > 1:  # every rank took part in every phase: show it
                phases = sched_comm.gather(writer.writes, root=0)
                log(ctx, f"collective write phases per rank: {phases}")
            writer.close()
    if status == sched.STATUS_COMPLETE:
        agree(comm, lambda: finish_overwrite(options, prepared.path) if ctx.is_master else None, ctx.rank)
        if prepared.path != options.out:
            log(ctx, f"the new surface replaced {options.out}")
        return EXIT_COMPLETE
    return EXIT_RESUMABLE


# ----------------------------------------------------------------------------------- evaluation
class GridEvaluator:
    """Flat grid indices in, the file's columns out: the engine's task metrics per split at the file's exact
    coordinates, and with --metrics ...,eig the Hessian's extreme eigenvalues and the Hessian-vector products they took."""

    def __init__(self, config: SurfaceConfig, options: RunOptions, inputs: Inputs, stored: tuple, ctx: RunContext,
                 hooks: BatchHooks, group: RankGroup | None = None) -> None:
        """`stored`: the file's (directions, coordinates), as `reader.read_run_inputs` gives them;
        `hooks`: this rank's per-batch and per-point fault points (`ctx.faults.batch_hooks()`); `group`: this
        rank's group under --ranks-per-point G > 1 (a leader names the points to its followers)."""
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
        self.followers = Followers(group) if group is not None and group.is_leader else None
        if group is not None:
            from landscape_mpi.engine import default_batch_size
            from landscape_mpi.engine.group import GroupEngine

            self.engine = GroupEngine(inputs.model, directions, inputs.data, theta=inputs.theta,
                                      task=inputs.task, device=ctx.device,
                                      precision=config.precision,
                                      batch_size=options.batch_size or default_batch_size(ctx.device),
                                      mode=options.group_mode, stop=StopRequested,
                                      check_stop=None if group.is_leader else STOP.check)
            if inputs.theta is not None:  # the pre-flight's fit check, on the sharded model (a group collective)
                for split in self.engine.data:  # on the device
                    check_fit(self.engine.model, split, config, inputs.task, grad_mode=torch.no_grad)
            log(ctx, self.engine.describe())
        else:
            self.engine = make_engine(inputs.model, directions, inputs.data, loss=inputs.task, device=ctx.device,
                                      precision=config.precision, batch_size=options.batch_size, bn=config.bn,
                                      bn_data=inputs.bn_data, kind=options.engine,
                                      log=lambda m: log(ctx, m))
        self.engine.on_batch = self._batch
        self.group_size = max(1, int(getattr(self.engine, "group_size", 1)))
        if config.eig or hooks.single_points:
            self.group_size = 1
        self.eig = None
        if config.eig:
            self.eig = CurvatureAtPoint(config, inputs, directions, ctx.device, options.batch_size, group,
                                        options.group_mode)

    def _batch(self, fraction: float) -> None:
        self.hooks.on_batch()
        if self.on_batch is not None:
            self.on_batch(fraction)

    def __call__(self, flats: np.ndarray) -> np.ndarray:
        self.hooks.before_points(len(flats))
        index = np.unravel_index(np.asarray(flats, dtype=np.int64), self.shape)
        coords = np.stack([c[i] for c, i in zip(self.coords, index)], axis=1)
        if self.followers is not None:
            self.followers.points(flats)
        try:
            values = np.asarray(self.engine.evaluate(coords), dtype=np.float64)
        except StopRequested as exc:  # the group agreed on a stop another member caught: this rank stops too
            STOP.request(str(exc) or "stop")
            raise
        if self.eig is not None:
            values = np.concatenate([values, np.array([self.eig(p) for p in coords])], axis=1)
        self.hooks.after_points(len(flats))
        return values


class CurvatureAtPoint:
    """lambda_max, lambda_min and the Hessian-vector products spent, at theta* + sum c_i d_i, on the training
    split (the first split if train is not evaluated), BatchNorm in eval mode.

    In a group of ranks (collective over the group: every member calls it for the same point): `data` mode
    divides the split among the members (exact products, `curvature.hessian`); `shard` mode shards a float64
    copy of the model like the evaluation (products by finite differences, `curvature.sharded_hessian`)."""

    def __init__(self, config: SurfaceConfig, inputs: Inputs, directions, device: torch.device,
                 batch_size: int | None, group: RankGroup | None = None, mode: str = "shard") -> None:
        if not any(p.requires_grad for p in inputs.model.parameters()):
            raise UserError(f"--metrics eig: --model {config.model} has no trainable parameter, so no Hessian")
        split = next((d for d in inputs.data if d.name == "train"), inputs.data[0])
        self.loss = inputs.task
        self.tol = config.eig_tol
        self.batch_size = batch_size
        self.comm = group.comm if group is not None else None
        self.op = None
        if group is not None and mode == "shard":
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
        if self.comm is not None:
            kwargs["comm"] = self.comm
        top, bottom, products = eig_extremes(self.model, self.data, self.loss, tol=self.tol, maxiter=EIG_MAXITER,
                                             **kwargs)
        return float(top), float(bottom), float(products)


# ------------------------------------------------------------------------------------------ helpers
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
