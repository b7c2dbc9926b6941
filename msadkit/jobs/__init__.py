"""One job runner for training runs, notebook runs and other commands: sweeps, benchmarks, comparisons.

Build jobs with :func:`training_job`, :func:`notebook_job` or :func:`command_job`, then
:func:`run_jobs` runs them as subprocesses, at most ``max_parallel`` at a time, each after the
jobs it needs, locally or on SLURM (:class:`SubmititBackend`, extra ``msadkit[slurm]``). Each run
folder gets a ``job.json`` with the command, the resolved config, the status, the times, the exit
code and the log; a finished folder is reused only when its recorded config equals the requested
one (:func:`decide_reuse`).
"""

from msadkit.jobs.backends import Backend, LocalProcessBackend, MissingExtraError, SubmititBackend
from msadkit.jobs.record import (
    JOB_RECORD_NAME,
    JobConfigMismatchError,
    ReuseDecision,
    config_differences,
    decide_reuse,
    read_job_record,
)
from msadkit.jobs.runner import JobEvent, JobOutcome, ProgressCallback, log_progress, run_jobs
from msadkit.jobs.spec import Job, command_job, msadkit_command, notebook_job, resolve_training_config, training_job

__all__ = [
    "Backend",
    "LocalProcessBackend",
    "SubmititBackend",
    "MissingExtraError",
    "JOB_RECORD_NAME",
    "JobConfigMismatchError",
    "ReuseDecision",
    "config_differences",
    "decide_reuse",
    "read_job_record",
    "JobEvent",
    "JobOutcome",
    "ProgressCallback",
    "log_progress",
    "run_jobs",
    "Job",
    "command_job",
    "msadkit_command",
    "notebook_job",
    "resolve_training_config",
    "training_job",
]
