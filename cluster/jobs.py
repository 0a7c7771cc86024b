"""`raylift jobs ls | logs ID [--follow] | stop ID`: the Ray jobs of a cluster.

Talks to the same address as `raylift submit` (--address, else $RAY_ADDRESS, else
http://127.0.0.1:8265). `logs --follow` streams until the job ends and exits with its outcome
(0 SUCCEEDED, 1 FAILED/STOPPED), like `raylift submit --follow`.
"""
from __future__ import annotations

import sys
import time

from cluster.console import LogFilter
from cluster.submit import ClusterError, add_address_argument, connect, follow_logs, report_outcome, resolve_address


def add_arguments(parser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", help="list the cluster's jobs, newest first")
    add_address_argument(ls)
    logs = actions.add_parser("logs", help="print (or --follow) a job's logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", action="store_true", help="stream until the job ends")
    add_address_argument(logs)
    stop = actions.add_parser("stop", help="stop a running job")
    stop.add_argument("job_id")
    add_address_argument(stop)


def _when(ms) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def run(args) -> int:
    client = connect(resolve_address(args.address))
    if args.action == "ls":
        jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)
        if not jobs:
            print("no jobs")
            return 0
        print(f"{'JOB':44s} {'STATUS':10s} {'STARTED':19s}  COMMAND")
        for job in jobs:
            job_id = job.submission_id or job.job_id or "?"
            command = (job.metadata or {}).get("raylift_command")
            command = f"raylift {command}" if command else (job.entrypoint or "")
            print(f"{job_id:44s} {str(job.status.value):10s} {_when(job.start_time):19s}  {command}")
        return 0
    job_id = args.job_id
    try:
        status = str(client.get_job_status(job_id).value)
    except RuntimeError as e:
        raise ClusterError(f"job {job_id!r}: not found on the cluster ({e})") from None
    if args.action == "stop":
        stopped = client.stop_job(job_id)
        print(f"job {job_id}: {'stop requested' if stopped else f'not running ({status})'}")
        return 0
    if args.follow:
        return report_outcome(client, job_id, follow_logs(client, job_id))
    shown = LogFilter(sys.stdout)
    shown.write(client.get_job_logs(job_id))
    shown.close()
    print(f"(job {job_id} {status})", file=sys.stderr)
    return 0
