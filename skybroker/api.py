"""Use cases behind the CLI, also the Python API: the one facade that commands (local mode), the server
(server/calls.py) and the managed-jobs controller call, as `api.X`. Nothing here prints or reads the
terminal. The use cases live by subject: api_plan.py (tasks, plans, preflight, show-gpus), api_clusters.py
(cluster operations), api_jobs.py (managed jobs and pools), api_reports.py (events, costs, daemons); every
public name is re-exported here, so `api.plan` is what callers (and tests that replace it) look up.
"""
from __future__ import annotations

from .api_clusters import (adopt, cancel, cluster_exists, cluster_names, down, exec_, forget_host_keys, gc_remove,
                           gc_scan, get_cluster, launch, logs, queue, set_autostop, ssh_grant, ssh_target, start,
                           status, stop)
from .api_jobs import (jobs_cancel, jobs_get, jobs_launch, jobs_launch_pipeline, jobs_launch_pool, jobs_logs,
                       jobs_queue, pool_apply, pool_down, pool_status, pool_wait_ready)
from .api_plan import (COMMON_GPUS, GpuRow, exec_task, load_pipeline, load_task, managed_risk, plan, preflight,
                       price_ages, show_gpus)
from .api_reports import (cluster_costs, cost_report, daemons, events, job_costs, job_timeline, stopped_hourly)

__all__ = ["COMMON_GPUS", "GpuRow", "adopt", "cancel", "cluster_costs", "cluster_exists", "cluster_names",
           "cost_report", "daemons", "down", "events", "exec_", "exec_task", "forget_host_keys", "gc_remove",
           "gc_scan", "get_cluster", "job_costs", "job_timeline", "jobs_cancel", "jobs_get", "jobs_launch",
           "jobs_launch_pipeline", "jobs_launch_pool", "jobs_logs", "jobs_queue", "launch", "load_pipeline",
           "load_task", "logs", "managed_risk", "plan", "pool_apply", "pool_down", "pool_status",
           "pool_wait_ready", "preflight", "price_ages", "queue", "set_autostop", "show_gpus", "ssh_grant",
           "ssh_target", "start", "status", "stop", "stopped_hourly"]
