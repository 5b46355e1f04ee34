"""Container images (`resources.image_id: docker:IMAGE`): what the lifecycle asks the nodes' agents for.

The node side (engine, pull, run, exec) is runtime/agent/container.py; here is the client's part: which image a
cluster's task asks for, the spec sent to every node (image, `config.docker.run_options`, the mount points
outside the home, the registry login from SkyPilot's variables), and the user-facing errors. Registry
variables (SkyPilot's names), from the task's `envs`/`secrets` or `--env`/`--secret`:

    SKYPILOT_DOCKER_USERNAME  SKYPILOT_DOCKER_PASSWORD  SKYPILOT_DOCKER_SERVER

The password crosses to the node on the agent's stdin and from there only to `login --password-stdin`.
"""
from __future__ import annotations

import os

from .errors import SpecError

PREFIX = "docker:"
USER_VAR, PASSWORD_VAR, SERVER_VAR = "SKYPILOT_DOCKER_USERNAME", "SKYPILOT_DOCKER_PASSWORD", "SKYPILOT_DOCKER_SERVER"
INSTALL_HINT = ("install docker (`apt-get install -y docker.io`, the login user in the `docker` group or with "
                "passwordless sudo) or podman on the node image, or drop `image_id: docker:...`")


def is_container_image(value) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(PREFIX)


def strip(value: str) -> str:
    return value.strip()[len(PREFIX):].strip()


def image_for(task, cloud: str | None, region: str | None) -> str | None:
    """The container image the task asks for on this cloud/region (None: the task runs on the VM itself)."""
    for r in task.candidates:
        if r.cloud not in (None, cloud):
            continue
        for reg, img in r.image_id:
            if reg in ("", region) and is_container_image(img):
                return strip(img)
    return None


def runs_in_container(provider) -> bool:
    """False where the image IS the node (Kubernetes pods): nothing to start on it."""
    return not provider.capabilities.container_images


def _value(task, name: str) -> str | None:
    return task.secret_dict.get(name) or task.env_dict.get(name) or None


def spec_for(task, image: str) -> tuple[dict, str | None]:
    """(the spec every node's agent gets, the registry password — sent apart, never stored)."""
    home_rel = [m.remote for m in task.file_mounts if not m.remote.startswith("~")]
    spec = {"image": image, "run_options": list(task.docker_run_options),
            "mounts": sorted({os.path.normpath(p) for p in home_rel if os.path.isabs(p)}),
            "username": _value(task, USER_VAR), "server": _value(task, SERVER_VAR)}
    return spec, _value(task, PASSWORD_VAR)


def error(exc, image: str) -> SpecError:
    """A node's ContainerFailed as the user's error: exit 2, naming resources.image_id."""
    from .runtime.agent import container

    if exc.agent_code == container.ENGINE_MISSING:
        return SpecError(f"docker:{image} needs a container engine on every node; on {exc.label}: {exc.detail}",
                         INSTALL_HINT, field="resources.image_id")
    if exc.agent_code == container.PULL_FAILED:
        return SpecError(f"docker:{image} could not be pulled on {exc.label}: {exc.detail}",
                         "check the image name and tag; for a private registry pass SKYPILOT_DOCKER_USERNAME, "
                         "--secret SKYPILOT_DOCKER_PASSWORD and SKYPILOT_DOCKER_SERVER", field="resources.image_id")
    return SpecError(f"the container of docker:{image} did not start on {exc.label}: {exc.detail}",
                     "the image needs /bin/sh; check config.docker.run_options", field="resources.image_id")
