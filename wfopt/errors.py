"""The one line between a workflow's failure and a failure of wfopt itself.

A score of 0 means "this workflow failed on this problem": search turns it into rewards and
GRPO into gradients. So only the workflow's own faults (`WorkflowError` below: invalid
code, budget, timeout, limits, its own exceptions) and the answer's faults (the scorers'
categories) are ever scored. Everything below is an `InfrastructureError`: it stops the
command with a message naming the resource and the cause, nothing is recorded for the affected
runs, and `search`/`loop` say how to resume.
"""

from __future__ import annotations

# -- the workflow's own faults: scored (wfopt.workflow raises them) ---------------------------


class WorkflowError(Exception):
    """A workflow failed; `category` is what the evaluation records."""

    category = "runtime_error"


class InvalidWorkflow(WorkflowError):
    """Rejected by the validator before anything ran."""

    category = "invalid"


class LimitExceeded(WorkflowError):
    """A size or step limit of the language was hit at run time."""

    category = "limit"


class BudgetExceeded(WorkflowError):
    """More operator calls than the budget allows."""

    category = "budget"


class WorkflowTimeout(WorkflowError):
    category = "timeout"


# -- wfopt's faults: never scored ------------------------------------------------------------


class InfrastructureError(RuntimeError):
    """A fault of wfopt's machinery: executor backends, the response cache, the operator
    plumbing, the sandbox runner (not the sandboxed program), scorer workers, run-dir I/O."""

    what = "wfopt's own machinery failed"  # the first words of the command's error message

    def describe(self) -> str:
        return f"{self.what}: {self}"


class CacheError(InfrastructureError):
    """The response cache file cannot be opened, read or written."""

    what = "the response cache failed"


class SandboxError(InfrastructureError):
    """The sandbox runner itself failed (the sandboxed program never ran to an outcome)."""

    what = "the code sandbox failed"


class ScorerError(InfrastructureError):
    """A scorer (or its worker process) failed for a reason that is not the answer's."""

    what = "the scorer failed"


class RunDirError(InfrastructureError):
    """The run directory cannot be written (read-only, full, gone)."""

    what = "the run directory cannot be written"


class CheckpointError(InfrastructureError, ValueError):
    """A checkpoint's files are missing, truncated or corrupt; the message names the file."""

    what = "the checkpoint cannot be read"
