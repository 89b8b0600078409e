"""`landscape-mpi surface --adaptive POINTS`: the surface job on an adaptive grid.

The file is the regular surface file of the user's grid (the finest lattice; same durability, resume and --io
collective), of which only the chosen points are computed, plus /results/round: the round that chose each
point. The refinement rule is landscape_mpi/numbers/refinement.py (docs/method.md#adaptive-grids).

What changes against the regular job (`SurfaceJob`), on rank 0 only:
- after the file step, rank 0 replays the refinement from the file's values (`refinement.replay`: a new file
  has none) and knows the round in progress and its points not done yet; a finished refinement computes
  nothing;
- the master hands out one round at a time (`sched.Master`'s refill): once every point of a round is back, the
  next round is chosen from the values (its points recorded in /results/round through rank 0's writer, before
  any of them is marked done) and handed out; within a round the ranks balance as on a regular grid.
The other ranks run the regular job's worker: they never need to know the rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from landscape_mpi.config.surface import RunOptions, SurfaceConfig
from landscape_mpi.files import reader
from landscape_mpi.numbers.refinement import Refinement, Rule, replay
from landscape_mpi.runtime.context import RunContext
from landscape_mpi.runtime.lifecycle import agree
from landscape_mpi.surface.inputs import Inputs
from landscape_mpi.surface.prepare import Opened, Prepared
from landscape_mpi.surface.run import SurfaceJob, log


def job_of(config: SurfaceConfig) -> Callable[[SurfaceConfig, RunOptions, RunContext], SurfaceJob] | None:
    """The job of `config`: `AdaptiveSurfaceJob` with --adaptive, else None (the regular job)."""
    return AdaptiveSurfaceJob if config.adaptive is not None else None


@dataclasses.dataclass
class State:
    """Rank 0's refinement: the replayed state, the values of the first metric (flat, NaN where not done), the
    done mask (flat) and the points of the round in progress not done yet."""

    refinement: Refinement
    values: np.ndarray
    done: np.ndarray
    todo: np.ndarray


class AdaptiveSurfaceJob(SurfaceJob):
    """The surface job whose master chooses the points in rounds (`numbers.refinement`)."""

    def __init__(self, config: SurfaceConfig, options: RunOptions, ctx: RunContext) -> None:
        super().__init__(config, options, ctx)
        self.rule = Rule.of(config)
        self.state: State | None = None

    def prepare(self, inputs: Inputs) -> tuple[Opened | None, Prepared]:
        """The regular file step, then rank 0 replays the refinement from the file's values; every rank gets
        the points left in the round in progress (0: the refinement is over)."""
        opened, prepared = super().prepare(inputs)
        ctx = self.ctx

        def replay_step() -> int | None:
            if not ctx.is_master:
                return None
            self.state = self.replay(opened, prepared.path)
            return len(self.state.todo)

        left = ctx.comm.bcast(agree(ctx.comm, replay_step, ctx.rank), root=0)
        if ctx.is_master:
            log(ctx, self.describe())
        return opened, dataclasses.replace(prepared, todo=left)

    def replay(self, opened: Opened | None, path: str) -> State:
        """The refinement the file's values determine (rank 0)."""
        size = int(np.prod(self.rule.shape))
        values = np.full(size, np.nan)
        done = np.zeros(size, dtype=bool) if opened is None else opened.done.ravel()
        if opened is None:  # every point is done: the refinement still says where it stands
            with reader.open_surface(path) as f:
                done = f.done().ravel()
        if done.any():
            with reader.open_surface(path) as f:
                done = f.done().ravel()  # before the values: a point marked done has its values
                values = f.values(self.config.metrics[0], done.reshape(self.rule.shape)).ravel()
        refinement, todo = replay(self.rule, done, values)
        return State(refinement, values, done.copy(), todo)

    def describe(self) -> str:
        r = self.state.refinement
        where = (f"finished ({r.finished}) after round {r.round}" if not len(self.state.todo)
                 else f"round {r.round}, {len(self.state.todo)} of its points to compute")
        return (f"adaptive grid: {r.chosen} of --adaptive {self.rule.budget} points chosen, {where} (rounds of "
                f"{self.rule.round_size} points, on the first metric {self.config.metrics[0]})")

    def points(self, opened: Opened) -> tuple[np.ndarray, int, int]:
        state = self.state
        if self.writer is not None:  # the round in progress, recorded (again) before its points are done
            self.writer.queue_rounds(state.todo, state.refinement.round)
        return state.todo, self.rule.budget, state.refinement.chosen - len(state.todo)

    def rounds(self) -> dict:
        state, writer, ctx = self.state, self.writer, self.ctx

        def on_results(results) -> None:
            for flat, row, _ in results:
                state.values[flat] = row[0]
                state.done[flat] = True

        def refill() -> np.ndarray:
            # a resume may find later rounds' points done (a lost write of an earlier round's last points, or
            # the collective writes' order): those are not computed again, and a round done whole is passed
            points = state.refinement.advance(state.values)
            while len(points) and state.done[points].all():
                points = state.refinement.advance(state.values)
            points = points[~state.done[points]]
            if len(points):
                if writer is not None:
                    writer.queue_rounds(points, state.refinement.round)
                log(ctx, f"round {state.refinement.round}: {len(points)} points "
                         f"({state.refinement.chosen} of {self.rule.budget} chosen)")
            else:
                log(ctx, f"adaptive grid finished ({state.refinement.finished}): {state.refinement.chosen} points")
            return points

        return {"refill": refill, "on_results": on_results}
