"""Container templates: only what an operator allowed, checked on save and again before a start.

The defaults allow named volumes, Docker's default bridge and ``none``, nothing more:
no bind mounts (``SCALING_ALLOWED_BIND_ROOTS``), no other network
(``SCALING_ALLOWED_NETWORKS``), and never privileged mode, added capabilities,
devices, host namespaces, security options or any option the backend does not set.
"""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.checks import Error, Warning
from django.core.exceptions import ValidationError

from scaling.checks import check_scaling_allowed_bind_roots
from scaling.docker_backend import SERVICE_LABEL, ContainerTemplate, DockerBackend, run_options
from scaling.models import ScalingEvent, ScalingPolicy
from scaling.service import AutoScalingService
from scaling.validators import validate_run_options
from tests import test_scaling_docker
from tests.test_scaling_docker import TINY_IMAGE, make_policy

docker_client = test_scaling_docker.docker_client
service_name = test_scaling_docker.service_name


def policy_with(**fields) -> ScalingPolicy:
    defaults = {"service": "api", "image": TINY_IMAGE, "target_cpu_percent": 70.0}
    defaults.update(fields)
    return ScalingPolicy(**defaults)


def errors_of(policy: ScalingPolicy) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        policy.full_clean()
    return caught.value.message_dict


# --- Volumes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec", ["/etc:/etc:ro", "/root/.ssh:/keys:ro", "/srv/app:/app", "/var/lib/docker:/docker", "/dev:/dev"]
)
def test_a_bind_mount_is_refused_by_default_naming_the_setting(db, spec):
    [message] = errors_of(policy_with(volumes=[spec]))["volumes"]

    assert message.startswith(f"{spec!r} bind-mounts ")
    assert "SCALING_ALLOWED_BIND_ROOTS: none" in message
    assert "named volume" in message


@pytest.mark.parametrize("spec", ["/etc:/etc:ro", "/srv:/srv", "/srv/fcp-other:/data", "/srv/fcpx/data:/data"])
def test_a_bind_mount_outside_the_allowed_roots_is_refused(db, settings, spec):
    settings.SCALING_ALLOWED_BIND_ROOTS = ["/srv/fcp", "/opt/app/"]

    [message] = errors_of(policy_with(volumes=[spec]))["volumes"]

    assert "not below an allowed root (SCALING_ALLOWED_BIND_ROOTS: /srv/fcp, /opt/app/)" in message


@pytest.mark.parametrize(
    "spec", ["/srv/fcp:/data", "/srv/fcp/data:/data:ro", "/srv/fcp/./cache/:/cache:rw", "/opt/app/bin:/bin2:ro"]
)
def test_a_bind_mount_below_an_allowed_root_is_accepted(db, settings, spec):
    settings.SCALING_ALLOWED_BIND_ROOTS = ["/srv/fcp", "/opt/app/"]

    policy_with(volumes=[spec]).full_clean()


def test_dot_dot_cannot_climb_out_of_an_allowed_root(db, settings):
    settings.SCALING_ALLOWED_BIND_ROOTS = ["/srv/fcp"]

    [message] = errors_of(policy_with(volumes=["/srv/fcp/../../etc:/etc"]))["volumes"]

    assert "may not contain '..'" in message


@pytest.mark.parametrize(
    "spec", ["/var/run/docker.sock:/var/run/docker.sock", "/run/docker.sock:/d.sock", "/var/run:/host-run:ro", "/:/h"]
)
def test_the_engine_socket_is_never_mountable_even_below_an_allowed_root(db, settings, spec):
    settings.SCALING_ALLOWED_BIND_ROOTS = ["/"]

    [message] = errors_of(policy_with(volumes=[spec]))["volumes"]

    assert "Docker engine's socket (root on the host): never allowed" in message


def test_the_configured_engine_socket_counts_too(db, settings):
    settings.SCALING_ALLOWED_BIND_ROOTS = ["/srv"]
    settings.DOCKER_URL = "unix:///srv/engine/docker.sock"

    assert "never allowed" in errors_of(policy_with(volumes=["/srv/engine:/e"]))["volumes"][0]


@pytest.mark.parametrize("spec", ["data:/data", "fcp_cache:/cache:ro", "pg-data.1:/var/lib/postgresql/data:rw"])
def test_named_volumes_are_accepted_without_any_setting(db, spec):
    policy_with(volumes=[spec]).full_clean()


@pytest.mark.parametrize("spec", ["data", "data:relative", "/srv:/srv:rwx", "-bad:/data", 42, {"source": "/"}])
def test_a_malformed_volume_is_refused(db, spec):
    assert "is not a volume" in errors_of(policy_with(volumes=[spec]))["volumes"][0]


# --- Networks ------------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["", "bridge", "none"])
def test_the_default_bridge_and_none_are_always_allowed(db, network):
    policy_with(network=network).full_clean()


@pytest.mark.parametrize(("network", "shares"), [("host", True), ("container:db", True), ("backend-net", False)])
def test_any_other_network_is_refused_by_default_naming_the_setting(db, network, shares):
    [message] = errors_of(policy_with(network=network))["network"]

    assert message.startswith(f"{network!r} is not an allowed network")
    assert ("shares the host's or another container's network namespace" in message) is shares
    assert "SCALING_ALLOWED_NETWORKS (now: none)" in message


@pytest.mark.parametrize("network", ["host", "container:db", "backend-net"])
def test_a_network_an_operator_listed_is_accepted(db, settings, network):
    settings.SCALING_ALLOWED_NETWORKS = ["host", "container:db", "backend-net"]

    policy_with(network=network).full_clean()


def test_a_listed_network_allows_only_itself(db, settings):
    settings.SCALING_ALLOWED_NETWORKS = ["backend-net"]

    assert "SCALING_ALLOWED_NETWORKS (now: backend-net)" in errors_of(policy_with(network="host"))["network"][0]


# --- The engine call's options, right before a start -----------------------------------------


def options(**extra) -> dict:
    return {**run_options("api", "fcp-api-1", ContainerTemplate(image=TINY_IMAGE, command=("sleep", "60"))), **extra}


def test_the_options_the_backend_sets_pass():
    validate_run_options(TINY_IMAGE, options())
    validate_run_options(TINY_IMAGE, options(volumes=["data:/data"], network_mode="none"))


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("privileged", True, "privileged mode gives the container every capability"),
        ("cap_add", ["SYS_ADMIN"], "added capabilities"),
        ("devices", ["/dev/sda:/dev/sda:rwm"], "host devices"),
        ("pid_mode", "host", "sharing a PID namespace"),
        ("ipc_mode", "host", "sharing an IPC namespace"),
        ("userns_mode", "host", "leaving the user namespace"),
        ("uts_mode", "host", "sharing the UTS namespace"),
        ("security_opt", ["seccomp=unconfined"], "seccomp and AppArmor (unconfined)"),
        ("mounts", [{"Source": "/", "Target": "/host"}], "bypass the volume rules"),
        ("shm_size", "1g", "the control plane does not set it"),
    ],
)
def test_dangerous_and_unknown_options_are_refused_by_name(key, value, why):
    with pytest.raises(ValidationError) as caught:
        validate_run_options(TINY_IMAGE, options(**{key: value}))

    [message] = caught.value.messages
    assert message.startswith(f"{key}: refused: ")
    assert why in message


def test_volumes_and_network_are_checked_again_against_the_current_settings():
    with pytest.raises(ValidationError) as caught:
        validate_run_options(TINY_IMAGE, options(volumes=["/etc:/etc:ro"], network_mode="host"))

    volumes, network = caught.value.messages
    assert volumes.startswith("volumes: '/etc:/etc:ro' bind-mounts /etc")
    assert network.startswith("network: 'host' is not an allowed network")


# --- Defence in depth against the real engine ------------------------------------------------


@pytest.mark.docker
@pytest.mark.parametrize(
    "fields",
    [
        {"volumes": ["/etc:/host-etc:ro"]},
        {"volumes": ["/var/run/docker.sock:/var/run/docker.sock"]},
        {"network": "host"},
    ],
)
def test_a_policy_saved_around_validation_never_starts_a_container(db, docker_client, service_name, fields):
    policy = make_policy(service_name, min_instances=0)
    ScalingPolicy.objects.filter(pk=policy.pk).update(**fields)  # no full_clean on this path

    event = AutoScalingService().scale_to(service_name, 1)  # manual scaling validates nothing itself

    assert event is not None
    assert (event.action, event.success, event.to_instances) == ("up", False, 0)
    assert "refused before starting: " in event.error
    assert next(iter(fields)) + ": " in event.error
    assert docker_client.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={service_name}"}) == []


@pytest.mark.docker
def test_a_template_handed_straight_to_the_backend_is_refused_too(docker_client, service_name):
    template = ContainerTemplate(image=TINY_IMAGE, command=("sleep", "60"), volumes=("/:/host",))

    with DockerBackend() as backend:
        result = backend.start_instance(service_name, template)

    assert result.ok is False
    assert result.error.startswith("refused before starting: volumes: '/:/host' would give the container")
    assert docker_client.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={service_name}"}) == []


@pytest.mark.docker
def test_the_tick_records_an_invalid_policy_instead_of_starting_it(db, docker_client, service_name):
    policy = make_policy(service_name, min_instances=1)
    ScalingPolicy.objects.filter(pk=policy.pk).update(network="host")

    AutoScalingService().run(service_name)

    event = ScalingEvent.objects.get(service=service_name)
    assert (event.rule, event.success) == ("invalid_policy", False)
    assert event.error.startswith("invalid policy: network: 'host' is not an allowed network")
    assert docker_client.containers.list(all=True, filters={"label": f"{SERVICE_LABEL}={service_name}"}) == []


# --- The admin form and the system check -----------------------------------------------------


def test_the_admin_form_shows_the_refusal_under_the_field(client, db):
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "a-long-password-123"))
    form = {
        "service": "api", "min_instances": 1, "max_instances": 2, "target_cpu_percent": 50, "queues": "[]",
        "tolerance": 0.1, "scale_up_step_limit": 4, "scale_down_stabilization_seconds": 300, "cooldown_seconds": 60,
        "image": TINY_IMAGE, "command": "[]", "environment": "{}", "labels": "{}", "network": "host",
        "volumes": '["/etc:/etc:ro"]', "working_dir": "", "stop_timeout": 10,
    }  # fmt: skip

    page = client.post("/admin/scaling/scalingpolicy/add/", form).content.decode()

    assert "SCALING_ALLOWED_NETWORKS (now: none)" in page
    assert "SCALING_ALLOWED_BIND_ROOTS: none" in page
    assert not ScalingPolicy.objects.filter(service="api").exists()


def test_the_system_check_flags_relative_and_root_bind_roots(settings):
    settings.SCALING_ALLOWED_BIND_ROOTS = ["srv/data", "/", "/srv/fcp"]

    messages = check_scaling_allowed_bind_roots()

    assert [(type(m), m.id) for m in messages] == [(Error, "scaling.E003"), (Warning, "scaling.W001")]
    assert "'srv/data' is not an absolute path" in messages[0].msg
