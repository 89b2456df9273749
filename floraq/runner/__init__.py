"""The runner: drive every active job of some batches to a final state, or to a safe stop.

One small module per step, each a function of a shared ``RunContext``:

    loop     paging through the ledger, one task per job, stopping everything
    submit   claim the intent (quote + intent in one transaction), POST, apply the outcome
    poll     poll until done; a completed run's outputs, late charge and durations
    rerun    a failed run: its failure tier, and a new attempt when that may pass
    fetch    downloads, and re-polls for fresh URLs when one has expired
    commit   the group committer (one transaction per loop turn)
    context  what the steps share: collaborators, plans, report, stop flags
    build    ``build_runner``: the one place a runner is put together
"""

from floraq.core.submission import JOB_ROUNDS
from floraq.runner.build import Seams, build_runner
from floraq.runner.commit import GroupCommitter
from floraq.runner.context import BatchPlan, Progress, RunnerConfig, RunReport
from floraq.runner.fetch import EXPIRED_REPOLLS, safe_segment
from floraq.runner.loop import PAGE_SIZE, Runner
from floraq.runner.poll import COST_RECHECKS

__all__ = [
    "COST_RECHECKS",
    "EXPIRED_REPOLLS",
    "JOB_ROUNDS",
    "PAGE_SIZE",
    "BatchPlan",
    "GroupCommitter",
    "Progress",
    "RunReport",
    "Runner",
    "RunnerConfig",
    "Seams",
    "build_runner",
    "safe_segment",
]
