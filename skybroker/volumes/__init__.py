"""Volumes (SkyPilot's `sky volumes` and the task's `volumes:` field).

A volume is storage that lives in one place (a zone, or this machine), independent of clusters:

  - applied volumes: `broker volumes apply volume.yaml` creates one (name, type, infra, size, labels) and
    records it (records.py); a task mounts it with `volumes: {/mnt/path: NAME}` or
    `{/mnt/path: {name: NAME, sub_path: dir}}`. It outlives every cluster; `broker volumes delete NAME`
    removes it (refused while a cluster has it attached);
  - ephemeral volumes: `volumes: {/mnt/path: {size: 10Gi, labels: {...}}}` creates one per node in the zone
    the plan chose, with the cluster; `broker down` deletes it (cluster_ops.terminate → release_cluster).

Types (model.TYPES): `local-dir` (a directory on this machine, the local cloud), `aws-ebs` (an EBS
volume), `gcp-pd` (a GCE persistent disk). Which provider owns a type is said by the provider
(`Provider.volume_types`, capability `volumes`); nothing here names a cloud's API.

Where it runs: an applied volume's cloud/region/zone become a placement constraint on every Resources of
the task before the optimizer runs (ops.constrain), so the plan lands where the volume is; a task with
ephemeral volumes is planned on the clouds that can create one. Block volumes (EBS, persistent disks)
attach to one instance at a time: on a multi-node cluster they attach to the head node only (said in a
warning); a local directory is seen by every node of the machine.
"""
