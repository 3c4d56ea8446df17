"""The invariants auditor: checks the job database against the files on disk.

Run by `pacs-node audit` and after every fault-injection test. Each finding names the
invariant it breaks (docs/architecture.md):

2. every accepted instance belongs to a job, and once the node has settled that job is
   finished (DONE, FAILED or SKIPPED) or HELD for an admin by the QA gate;
3. a DONE job has a derived instance for every instance it received, each with a distinct
   UID (unless retention removed its files);
4. a running job has a lease with an owner;
5. no orphan files (a file under the data directory that no row names, a leftover
   temporary file) and no dangling rows (an unfinished job's file missing);
6. a FAILED job carries its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from pacs_node.db.models import Instance, Job, JobEvent, JobOutput, JobStatus
from pacs_node.storage import InstanceStore

__all__ = ["Finding", "audit"]

_WORKING = (JobStatus.RUNNING, JobStatus.SENDING)


@dataclass(frozen=True)
class Finding:
    """One broken invariant."""

    invariant: int
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "detail": self.detail}


def _files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()


def audit(sessions: Any, store: InstanceStore, *, settled: bool = True) -> list[Finding]:
    """Every broken invariant found; ``settled``: no job should still be in progress."""
    with sessions() as session:
        jobs = {row.id: row for row in session.execute(
            select(Job.id, Job.series_id, Job.status, Job.lease_owner, Job.lease_expires_at,
                   Job.error_message)
        )}  # fmt: skip
        instances = session.execute(
            select(Instance.sop_instance_uid, Instance.path, Instance.job_id, Instance.series_id)
        ).all()
        # Jobs whose files retention removed: their outputs are gone on purpose.
        trimmed = set(
            session.scalars(
                select(JobEvent.job_id).where(JobEvent.message.startswith("retention:"))
            )
        )
        outputs = session.execute(
            select(
                JobOutput.job_id,
                JobOutput.sop_instance_uid,
                JobOutput.source_sop_instance_uid,
                JobOutput.path,
                JobOutput.series_instance_uid,
            )
        ).all()
    findings: list[Finding] = []
    inputs: dict[int, set[str]] = {}
    series_with_jobs = {job.series_id for job in jobs.values()}
    for uid, path, job_id, series_id in instances:
        if job_id is None or job_id not in jobs:
            # The job that received it was deleted; another job of its series still has it.
            if series_id not in series_with_jobs:
                findings.append(Finding(2, f"instance {uid} belongs to no job"))
            continue
        inputs.setdefault(job_id, set()).add(uid)
        if not jobs[job_id].status.finished and not Path(path).is_file():
            findings.append(Finding(5, f"instance {uid} of unfinished job {job_id}: "
                                       f"{path} is missing"))  # fmt: skip
    for job_id, job in jobs.items():
        if settled and not job.status.finished and job.status is not JobStatus.HELD:
            findings.append(Finding(2, f"job {job_id} is still {job.status.value}"))
        if job.status in _WORKING and (job.lease_owner is None or job.lease_expires_at is None):
            findings.append(Finding(4, f"job {job_id} is {job.status.value} without a lease"))
        if job.status is JobStatus.FAILED and not job.error_message:
            findings.append(Finding(6, f"job {job_id} FAILED without a reason"))
    by_job: dict[int, list[tuple[str, str]]] = {}
    for job_id, uid, source, _path, secondary in outputs:
        if secondary is None:  # the derived series (an uncertainty map covers no instance)
            by_job.setdefault(job_id, []).append((uid, source))
    for job_id, job in jobs.items():
        if job.status is not JobStatus.DONE or job_id in trimmed:
            continue
        made = by_job.get(job_id, [])
        derived = [uid for uid, _ in made]
        if len(set(derived)) != len(derived):
            findings.append(Finding(3, f"job {job_id} has a derived UID twice"))
        # A job processes its whole series; at least the instances it received must have
        # an output (a re-run job received none of its own).
        missing = inputs.get(job_id, set()) - {source for _, source in made}
        if missing:
            findings.append(Finding(3, f"job {job_id}: no output for {len(missing)} of its "
                                       f"{len(inputs[job_id])} instances"))  # fmt: skip
    known = {path for _, path, _, _ in instances} | {row.path for row in outputs}
    for path in sorted((_files(store.received_dir) | _files(store.derived_dir)) - known):
        findings.append(Finding(5, f"orphan file {path}"))
    return findings
