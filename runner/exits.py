"""The exit codes of the CLI contract (DESIGN.md), in one place: the CLI and the library agree."""

from __future__ import annotations

COMPLETED = 0  # every check passed
CHECK_FAILED = 1  # an invariant or a declared check failed
BAD_INPUT = 2  # a spec, a usage, data or an output folder the user must fix
RUN_FAILED = 3  # diverged or crashed (report.json says how)
INTERRUPTED = 130  # SIGINT/SIGTERM: resumable from the last checkpoint

BY_STATUS = {
    "completed": COMPLETED,
    "pruned": COMPLETED,  # a study's trial its pruner stopped: a result of the study, not a failure
    "diverged": RUN_FAILED,
    "failed": RUN_FAILED,
    "interrupted": INTERRUPTED,
}
