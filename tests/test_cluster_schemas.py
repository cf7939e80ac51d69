"""Every file in cluster/ against the schema that will read it, and the checks the operator makes that a
schema cannot; each check also fails on a deliberately broken copy.

- KubeRay manifests: the served version's (v1) `openAPIV3Schema` of the KubeRay 1.7 CRDs in
  ../shared/schemas/kuberay/ (read from there, never copied), with unknown fields refused the way
  `kubectl apply --validate=strict` refuses them.
- What KubeRay checks at run time (a declared head port list without `dashboard` stops the RayService) and
  what makes a manifest deploy and run: distinct names, the claimed PVC defined (ReadWriteMany), replicas
  within min/max, jobs that fit the worker groups (or autoscaling on), GPU tolerations, pods that fit the
  named instance types, fsGroup for the shared volume, outputs on shared storage.
- The launcher YAML with Ray's own `prepare_config` + `validate_config`.
- serve/config.yaml and the RayService's serveConfigV2 with Ray Serve's `ServeDeploySchema` (unknown keys
  refused as well: pydantic ignores them, and a misspelt `num_replicas` would pass silently).
"""

from __future__ import annotations

import copy
import functools
import gzip
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_cluster import imtext_commands

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"

SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas" / "kuberay"
if not SCHEMAS.is_dir():  # CI clones elsewhere with shared/ beside the clone
    SCHEMAS = Path.cwd().parent / "shared" / "schemas" / "kuberay"

CRDS = {
    "RayCluster": "ray.io_rayclusters.yaml.gz",
    "RayJob": "ray.io_rayjobs.yaml.gz",
    "RayService": "ray.io_rayservices.yaml.gz",
}
SERVED_VERSION = "v1"

# What one pod may ask for on the instance types the manifests name, all 4 vCPU / 16 GiB nodes: AWS
# m6i.xlarge (head) and g5.xlarge (1 A10G), GCP e2-standard-4 and g2-standard-4 (1 L4). Derived, not
# measured: 4 vCPU less the kubelet's reservation (EKS: 80m) and the DaemonSets (aws-node, kube-proxy, CSI
# and GPU plugins: ~300m); 16 GiB less what the OS keeps (~0.7 GiB), kube-reserved (EKS: 893 MiB at 58 pods),
# eviction (100 MiB) and the DaemonSets (~0.5 GiB).
NODE_CPU = 3.6
NODE_MEMORY_GIB = 13.5
NODE_GPUS = 1
AUTOSCALER_SIDECAR = (0.5, 0.5)  # KubeRay's default autoscaler container (cpu, GiB) when not given
IMAGE_GID = 100  # rayproject/ray images: uid 1000 (ray), gid 100 (users)
HEAD_PORTS = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}


# ---- loading -----------------------------------------------------------------------------------------------


def kuberay_files() -> list[Path]:
    return sorted(KUBERAY.glob("*.yaml"))


def load_manifests(paths: list[Path] | None = None) -> list[dict]:
    docs = []
    for path in paths or kuberay_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append({**doc, "_file": path.name})
    return docs


def strict(schema: Any) -> Any:
    """An openAPIV3Schema as JSON Schema that refuses unknown fields: `additionalProperties: false` on every
    object schema with `properties` (unless it preserves unknown fields); int-or-string accepts both."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if (
        "properties" in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(kind: str) -> dict:
    path = SCHEMAS / CRDS[kind]
    if not path.is_file():
        pytest.fail(f"KubeRay CRD schema not found at {path}; the suite expects ../shared/schemas/kuberay/")
    crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == SERVED_VERSION)
    assert version["served"], f"{CRDS[kind]}: {SERVED_VERSION} is not served"
    return strict(version["schema"]["openAPIV3Schema"])


def schema_errors(doc: dict) -> list[str]:
    """Where a KubeRay manifest breaks its CRD's schema (empty when it matches)."""
    import jsonschema

    doc = {k: v for k, v in doc.items() if k != "_file"}
    kind = doc.get("kind")
    if kind not in CRDS:
        return [f"kind {kind!r} is not a KubeRay kind ({', '.join(CRDS)})"]
    errors = []
    if doc.get("apiVersion") != f"ray.io/{SERVED_VERSION}":
        errors.append(f"apiVersion {doc.get('apiVersion')!r}; the served version is ray.io/{SERVED_VERSION}")
    validator = jsonschema.Draft7Validator(crd_schema(kind))
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        errors.append(f"{kind} {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}")
    return errors


# ---- what the operator (and a running job) needs beyond the schema -----------------------------------------


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[doc["kind"]]


def _cpu(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _gib(value: Any) -> float:
    text = str(value)
    for suffix, scale in (
        ("Gi", 1.0),
        ("Mi", 1 / 1024),
        ("Ti", 1024.0),
        ("G", 1e9 / 2**30),
        ("M", 1e6 / 2**30),
    ):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text) / 2**30


def _pod_groups(spec: dict):
    """(label, group dict, pod spec) for the head and every worker group."""
    yield "head", spec["headGroupSpec"], spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield f"worker group {group['groupName']}", group, group["template"]["spec"]


def _gpus(pod: dict) -> int:
    return sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"]
    )


def gpu_capacity(spec: dict) -> tuple[int, int]:
    """(GPUs up at the start, GPUs at the groups' maximum)."""
    now = most = 0
    for group in spec.get("workerGroupSpecs", []):
        per_pod = _gpus(group["template"]["spec"])
        now += per_pod * group.get("replicas", group["minReplicas"])
        most += per_pod * group["maxReplicas"]
    return now, most


def train_commands(doc: dict) -> list:
    """The resolved configs of the `imtext train` commands a manifest runs (entrypoint) or documents (its
    header, including `imtext submit -- train ...`)."""
    from imtext.cli import build_parser
    from imtext.cli.config_flags import load_config

    header = []
    if "_file" in doc:  # the comment lines only: the entrypoint comes parsed, its folded lines joined
        lines = (KUBERAY / doc["_file"]).read_text().splitlines()
        header = [line for line in lines if line.lstrip().startswith("#")]
    texts = ["\n".join(header), str(doc.get("spec", {}).get("entrypoint", ""))]
    found = []
    for command in {c for t in texts for c in imtext_commands(t)}:
        argv = shlex.split(command)[1:]
        if argv[0] == "submit":
            argv = argv[argv.index("--") + 1 :]
        if argv[0] == "train":
            found.append(load_config(build_parser().parse_args(argv)))
    return found


def _on_shared_storage(path: str, mounts: set[str]) -> bool:
    return "://" in path or any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def operator_errors(docs: list[dict]) -> list[str]:
    """The checks a schema cannot make; empty when the manifests deploy and their jobs can run."""
    errors: list[str] = []
    ray_docs = [d for d in docs if d.get("kind") in CRDS]
    pvcs = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PersistentVolumeClaim"}

    names = [d["metadata"]["name"] for d in ray_docs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        errors.append(f"{name!r} names more than one Ray resource: they would share one head Service")

    for pvc_name, pvc in pvcs.items():
        if "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
            errors.append(f"PVC {pvc_name}: not ReadWriteMany; pods on several nodes cannot share it")

    for doc in ray_docs:
        where = f"{doc['_file']} ({doc['kind']} {doc['metadata']['name']})"
        spec = cluster_spec(doc)
        if spec is None:
            errors.append(f"{where}: no Ray cluster spec")
            continue
        autoscaling = bool(spec.get("enableInTreeAutoscaling"))
        mounts: set[str] = set()
        for label, group, pod in _pod_groups(spec):
            head = label == "head"
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            }
            for claim in claims.values():
                if claim not in pvcs:
                    errors.append(f"{where} {label}: PVC {claim!r} is not defined in cluster/kuberay/")
            if claims and pod.get("securityContext", {}).get("fsGroup") != IMAGE_GID:
                errors.append(
                    f"{where} {label}: no fsGroup {IMAGE_GID}; the image's user cannot write the volume"
                )
            for c in pod["containers"]:
                mounts |= {m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in claims}
            if not head:
                lo, hi = group["minReplicas"], group["maxReplicas"]
                if not lo <= group.get("replicas", lo) <= hi:
                    errors.append(f"{where} {label}: replicas {group.get('replicas')} outside [{lo}, {hi}]")
            if _gpus(pod) and not any(
                t.get("key") == "nvidia.com/gpu" and t.get("effect") in (None, "NoSchedule")
                for t in pod.get("tolerations", [])
            ):
                errors.append(f"{where} {label}: GPU pod without a nvidia.com/gpu toleration")
            cpu = mem = 0.0
            for c in pod["containers"]:
                res = c.get("resources", {})
                if res.get("requests") != res.get("limits"):
                    errors.append(
                        f"{where} {label}: requests differ from limits (Ray sizes itself from limits)"
                    )
                limits = res.get("limits", {})
                if "cpu" not in limits or "memory" not in limits:
                    errors.append(f"{where} {label}: no cpu/memory limits")
                    continue
                cpu, mem = cpu + _cpu(limits["cpu"]), mem + _gib(limits["memory"])
            if head and autoscaling:
                side = spec.get("autoscalerOptions", {}).get("resources", {}).get("limits", {})
                cpu += _cpu(side["cpu"]) if "cpu" in side else AUTOSCALER_SIDECAR[0]
                mem += _gib(side["memory"]) if "memory" in side else AUTOSCALER_SIDECAR[1]
            if cpu > NODE_CPU or mem > NODE_MEMORY_GIB or _gpus(pod) > NODE_GPUS:
                errors.append(
                    f"{where} {label}: asks {cpu:g} CPU / {mem:g} GiB / {_gpus(pod)} GPU, more than a "
                    f"4 vCPU / 16 GiB / 1 GPU node gives ({NODE_CPU} CPU / {NODE_MEMORY_GIB} GiB allocatable)"
                )
            if head:
                ports = {
                    p.get("name"): p.get("containerPort")
                    for c in pod["containers"]
                    for p in c.get("ports", [])
                }
                if ports:  # declared ports replace KubeRay's defaults (none declared: it adds them all)
                    wanted = dict(HEAD_PORTS, **({"serve": 8000} if doc["kind"] == "RayService" else {}))
                    for name, port in wanted.items():
                        if ports.get(name) != port:
                            errors.append(f"{where} head: declared ports lack {name} ({port}); got {ports}")

        now, most = gpu_capacity(spec)
        for cfg in train_commands(doc):
            need = cfg.train.workers if cfg.train.use_gpu else 0
            if need > most:
                errors.append(f"{where}: a job asks for {need} GPU workers; the groups hold at most {most}")
            elif need > now and not autoscaling:
                errors.append(
                    f"{where}: a job asks for {need} GPU workers, {now} are up and autoscaling is off: "
                    "it would wait forever"
                )
            for key, value in (("--out", cfg.train.out), ("train.storage_path", cfg.train.storage_path)):
                if not _on_shared_storage(value, mounts):
                    errors.append(
                        f"{where}: {key}={value or '(default)'} is not on the shared volume ({sorted(mounts)}) "
                        "or a URI: it would vanish with the job's working directory"
                    )
        if doc["kind"] == "RayService":
            apps = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
            gpus = sum(
                d.get("ray_actor_options", {}).get("num_gpus", 0)
                * d.get("autoscaling_config", {}).get("max_replicas", d.get("num_replicas", 1))
                for app in apps
                for d in app.get("deployments", [])
            )
            if gpus > most:
                errors.append(f"{where}: Serve replicas ask for up to {gpus:g} GPUs; the groups hold {most}")
            elif gpus > now and not autoscaling:
                errors.append(
                    f"{where}: Serve replicas grow to {gpus:g} GPUs, {now} are up, autoscaling is off"
                )
    return errors


# ---- KubeRay: schema ---------------------------------------------------------------------------------------


def test_the_crd_schemas_are_there_and_strict():
    for kind in CRDS:
        schema = crd_schema(kind)
        assert schema["properties"]["spec"]["additionalProperties"] is False
    assert {d["kind"] for d in load_manifests()} == {*CRDS, "PersistentVolumeClaim"}


@pytest.mark.parametrize("path", [p for p in kuberay_files()], ids=lambda p: p.name)
def test_manifest_matches_its_crd(path):
    for doc in load_manifests([path]):
        if doc["kind"] == "PersistentVolumeClaim":
            continue  # a core kind, not a CRD: operator_errors checks it (ReadWriteMany, referenced)
        assert schema_errors(doc) == [], path.name


def _doc(kind: str) -> dict:
    return copy.deepcopy(next(d for d in load_manifests() if d["kind"] == kind))


def test_schema_refuses_an_unknown_field():
    doc = _doc("RayService")
    doc["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {}  # misspelt rayStartParams
    errors = schema_errors(doc)
    assert any("rayStartParam" in e and "Additional properties" in e for e in errors), errors


def test_schema_refuses_an_unknown_field_deep_in_the_pod_template():
    doc = _doc("RayCluster")
    doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resource"] = {}  # not resources
    errors = schema_errors(doc)
    assert any("containers.0" in e and "'resource'" in e for e in errors), errors


def test_schema_refuses_a_wrong_type_and_a_missing_required_field():
    doc = _doc("RayJob")
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    del doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]
    errors = schema_errors(doc)
    assert any("replicas: 'four' is not of type 'integer'" in e for e in errors), errors
    assert any("'maxReplicas' is a required property" in e for e in errors), errors


def test_schema_refuses_an_unserved_api_version():
    doc = _doc("RayCluster")
    doc["apiVersion"] = "ray.io/v2"
    assert any("served version" in e for e in schema_errors(doc))


# ---- KubeRay: the operator's checks and the jobs' needs ----------------------------------------------------


def test_manifests_pass_the_operator_checks():
    assert operator_errors(load_manifests()) == []


def _broken(edit) -> list[str]:
    docs = copy.deepcopy(load_manifests())
    edit({d["kind"]: d for d in docs})
    return operator_errors(docs)


def _head_containers(doc: dict) -> list[dict]:
    return cluster_spec(doc)["headGroupSpec"]["template"]["spec"]["containers"]


def _drop_dashboard(docs):
    c = _head_containers(docs["RayService"])[0]
    c["ports"] = [p for p in c["ports"] if p["name"] != "dashboard"]


def test_operator_check_fails_without_the_dashboard_port():
    errors = _broken(_drop_dashboard)
    assert any("RayService imtext-search) head: declared ports lack dashboard (8265)" in e for e in errors), (
        errors
    )


def test_operator_check_fails_on_one_name_for_two_resources():
    errors = _broken(lambda d: d["RayService"]["metadata"].update(name=d["RayCluster"]["metadata"]["name"]))
    assert any("names more than one Ray resource" in e for e in errors), errors


def test_operator_check_fails_on_an_undefined_or_single_node_volume():
    def edit(docs):
        docs["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["volumes"][0][
            "persistentVolumeClaim"
        ]["claimName"] = "imtext-dataset"
        docs["PersistentVolumeClaim"]["spec"]["accessModes"] = ["ReadWriteOnce"]

    errors = _broken(edit)
    assert any("PVC 'imtext-dataset' is not defined" in e for e in errors), errors
    assert any("not ReadWriteMany" in e for e in errors), errors


def test_operator_check_fails_when_a_job_waits_for_workers_forever():
    def no_autoscaling(docs):
        docs["RayCluster"]["spec"]["enableInTreeAutoscaling"] = False

    errors = _broken(no_autoscaling)
    assert any("asks for 4 GPU workers, 1 are up and autoscaling is off" in e for e in errors), errors

    def too_few(docs):
        group = docs["RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
        group.update(replicas=2, minReplicas=2, maxReplicas=2)

    errors = _broken(too_few)
    assert any(
        "RayJob imtext-train): a job asks for 4 GPU workers; the groups hold at most 2" in e for e in errors
    )


def test_operator_check_fails_on_replicas_outside_min_max():
    errors = _broken(
        lambda d: d["RayService"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replicas=9)
    )
    assert any("replicas 9 outside [1, 4]" in e for e in errors), errors


def test_operator_check_fails_on_gpu_pods_that_fit_no_node_or_no_gpu_node():
    def edit(docs):
        pod = docs["RayCluster"]["spec"]["workerGroupSpecs"][0]["template"]["spec"]
        del pod["tolerations"]
        pod["containers"][0]["resources"]["limits"]["memory"] = "48Gi"  # the old limit: fits no 1-GPU node
        pod["containers"][0]["resources"]["requests"]["memory"] = "48Gi"

    errors = _broken(edit)
    assert any("without a nvidia.com/gpu toleration" in e for e in errors), errors
    assert any("asks 3 CPU / 48 GiB / 1 GPU" in e for e in errors), errors


def test_operator_check_fails_on_outputs_in_the_jobs_working_dir():
    def edit(docs):
        docs["RayJob"]["spec"]["entrypoint"] = docs["RayJob"]["spec"]["entrypoint"].replace(
            "--out /data/models/coco-resnet50 --set train.storage_path=/data/runs", "--out runs/model"
        )

    errors = _broken(edit)
    assert any("--out=runs/model is not on the shared volume" in e for e in errors), errors


def test_operator_check_fails_without_fs_group():
    errors = _broken(
        lambda d: d["RayJob"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"].pop(
            "securityContext"
        )
    )
    assert any("no fsGroup 100" in e for e in errors), errors


# ---- the cluster launcher ----------------------------------------------------------------------------------


def launcher_errors(config: dict) -> list[str]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:  # jsonschema.ValidationError or ValueError, as `ray up` reports them
        return [f"{type(e).__name__}: {str(e).splitlines()[0]}"]
    return []


def _launcher() -> dict:
    return yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())


def test_launcher_yaml_passes_rays_own_validation():
    assert launcher_errors(_launcher()) == []


def test_launcher_validation_fails_on_broken_copies():
    unknown = {**_launcher(), "max_wrokers": 8}
    assert any("max_wrokers" in e for e in launcher_errors(unknown)), launcher_errors(unknown)
    no_head = _launcher()
    no_head["head_node_type"] = "cpu_head"  # names no node type
    assert launcher_errors(no_head)


def test_launcher_names_only_files_that_exist():
    """Paths of this repository that the launcher YAML mentions (configs, spaces) exist."""
    import re

    text = (CLUSTER / "aws-gpu.yaml").read_text()
    for rel in re.findall(r"(?<![\w/.:-])((?:configs|tune|serve|cluster)/[\w./-]+\.(?:ya?ml|py))", text):
        assert (REPO / rel).is_file(), f"aws-gpu.yaml names {rel}, which does not exist"


# ---- Serve configs -----------------------------------------------------------------------------------------


def _strict_errors(model: type, data: Any, where: str) -> list[str]:
    """Keys pydantic would silently ignore: not a field (or alias) of `model`, recursively. A field typed
    `dict | Model` (autoscaling_config) passes a dict unchecked: it is checked against the model here."""
    import typing

    from pydantic import BaseModel

    if not isinstance(data, dict):
        return []
    fields = model.model_fields
    known = set(fields) | {f.alias for f in fields.values() if f.alias}
    found = [f"unknown key {where}.{k}" for k in data if k not in known]

    def models(annotation) -> list[type]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models(arg)]

    for name, field in fields.items():
        value = data.get(name, data.get(field.alias) if field.alias else None)
        for sub in models(field.annotation)[:1]:
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                at = f"{where}.{name}" + (f"[{i}]" if isinstance(value, list) else "")
                found += _strict_errors(sub, item, at)
                if isinstance(item, dict) and dict in map(
                    typing.get_origin, typing.get_args(field.annotation)
                ):
                    try:
                        sub.model_validate(item)
                    except ValueError as e:  # pydantic.ValidationError is a ValueError
                        found.append(f"{at}: {e}")
    return found


def serve_errors(config: dict) -> list[str]:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as e:
        return [str(e)]
    return _strict_errors(ServeDeploySchema, config, "config")


def _serve_configs() -> dict[str, dict]:
    service = _doc("RayService")
    return {
        "serve/config.yaml": yaml.safe_load((REPO / "serve" / "config.yaml").read_text()),
        "rayservice.yaml serveConfigV2": yaml.safe_load(service["spec"]["serveConfigV2"]),
    }


@pytest.mark.parametrize("name", list(_serve_configs()))
def test_serve_config_matches_serve_deploy_schema(name):
    assert serve_errors(_serve_configs()[name]) == []


def test_serve_validation_fails_on_broken_copies():
    config = _serve_configs()["rayservice.yaml serveConfigV2"]
    typo = copy.deepcopy(config)
    typo["applications"][0]["deployments"][0]["nm_replicas"] = 2
    assert serve_errors(typo) == ["unknown key config.applications[0].deployments[0].nm_replicas"]
    wrong = copy.deepcopy(config)
    wrong["applications"][0]["deployments"][0]["autoscaling_config"]["min_replicas"] = "one"
    assert any("min_replicas" in e for e in serve_errors(wrong))
    missing = copy.deepcopy(config)
    del missing["applications"][0]["import_path"]
    assert any("import_path" in e for e in serve_errors(missing))
