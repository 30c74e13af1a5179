"""Kubernetes deployment files, checked offline for real (no API server can run here).

- ``DaskJob`` / ``DaskCluster`` manifests against the ``openAPIV3Schema`` of the CRDs that the
  installed dask-kubernetes package ships (unknown fields rejected, as the API server would
  prune them), and their pod specs as built-in ``Pod`` specs with kubernetes-validate;
- ``storage.yaml`` (PVC + ConfigMap) with kubernetes-validate, the embedded job file with
  nldist's own schema;
- the object-storage variant (``daskjob-s3.yaml`` + ``storage-s3.yaml``: Secret + ConfigMap)
  the same way, and that none of its pods mounts a volume claim while every container gets
  the AWS_* credentials from that Secret (references, never literal values);
- the Dockerfile's pip install lines in a fresh virtualenv (slow, ~70 s; ``-m "not slow"``
  or ``NLDIST_SKIP_IMAGE_TEST=1`` skips it).
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from clusterkit import ROOT

K8S = ROOT / "cluster" / "k8s"
jsonschema = pytest.importorskip("jsonschema")


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _drop_nulls(x):
    if isinstance(x, dict):
        return {k: _drop_nulls(v) for k, v in x.items() if v is not None}
    if isinstance(x, list):
        return [_drop_nulls(v) for v in x if v is not None]
    return x


def _closed(schema):
    """Reject unknown fields where the CRD lists the allowed ones (the API server prunes
    them silently, which would hide a typo such as ``resource:`` for ``resources:``)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _crd_validator(kind: str):
    op = pytest.importorskip("dask_kubernetes.operator")
    crds = Path(op.__file__).parent / "deployment/helm/dask-kubernetes-operator/crds"
    crd = yaml.safe_load((crds / f"{kind.lower()}.yaml").read_text())
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v["served"]]
    schema = _drop_nulls(version["schema"]["openAPIV3Schema"])
    # the API server supplies these for every object; the CRD schema leaves them out
    schema["properties"].update({"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                 "metadata": {"type": "object"}})
    schema = _closed(schema)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema), f"{crd['spec']['group']}/{version['name']}"


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


@pytest.mark.parametrize(("fname", "kind"), [("daskjob.yaml", "DaskJob"),
                                             ("daskcluster.yaml", "DaskCluster"),
                                             ("daskjob-s3.yaml", "DaskJob")])
def test_manifest_matches_operator_crd(fname, kind):
    validator, api_version = _crd_validator(kind)
    (doc,) = _docs(fname)
    assert doc["apiVersion"] == api_version and doc["kind"] == kind
    assert _errors(validator, doc) == []


def test_crd_check_catches_mistakes():
    """The same check rejects a misspelt field, a wrong type and a missing container list."""
    validator, _ = _crd_validator("DaskJob")
    (doc,) = _docs("daskjob.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["cluster"]["spec"]["worker"]["replica"] = 2
    assert any("replica" in e for e in _errors(validator, bad))
    bad = copy.deepcopy(doc)
    bad["spec"]["cluster"]["spec"]["worker"]["replicas"] = "two"
    assert any("replicas" in e for e in _errors(validator, bad))
    bad = copy.deepcopy(doc)
    del bad["spec"]["job"]["spec"]["containers"]
    assert _errors(validator, bad)


def _pod_specs(doc: dict) -> dict[str, dict]:
    spec = doc["spec"]
    cl = spec["cluster"]["spec"] if doc["kind"] == "DaskJob" else spec
    out = {"worker": cl["worker"]["spec"], "scheduler": cl["scheduler"]["spec"]}
    if doc["kind"] == "DaskJob":
        out["job"] = spec["job"]["spec"]
    return out


@pytest.fixture(scope="module")
def k8s_version():
    kv = pytest.importorskip("kubernetes_validate")
    return kv, kv.latest_version()


@pytest.mark.parametrize("fname", ["daskjob.yaml", "daskcluster.yaml"])
def test_pod_specs_are_valid_pods(fname, k8s_version):
    """Each pod template of the custom resources is a valid built-in Pod spec (strict)."""
    kv, version = k8s_version
    (doc,) = _docs(fname)
    for role, spec in _pod_specs(doc).items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"nldist-{role}"},
               "spec": spec}
        kv.validate(pod, version, strict=True)
        for c in spec["containers"]:
            res = c["resources"]
            assert set(res) == {"requests", "limits"}, (role, res)
            assert {"cpu", "memory"} <= set(res["requests"]) and set(res["limits"]) >= {"memory"}
        mounts = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in spec.get("volumes", [])}, role
        if role in ("worker", "job"):  # the Zarr store is on the shared volume
            assert "data" in mounts, role
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": (doc["spec"]["cluster"]["spec"] if doc["kind"] == "DaskJob"
                    else doc["spec"])["scheduler"]["service"]}
    kv.validate(svc, version, strict=True)


def test_worker_memory_limit_fits_container():
    from dask.utils import parse_bytes

    for fname in ("daskjob.yaml", "daskcluster.yaml", "daskjob-s3.yaml"):
        (doc,) = _docs(fname)
        (c,) = _pod_specs(doc)["worker"]["containers"]
        dask_limit = parse_bytes(c["args"][c["args"].index("--memory-limit") + 1])
        pod_limit = parse_bytes(c["resources"]["limits"]["memory"].replace("Gi", "GiB"))
        assert dask_limit < pod_limit, fname


def test_storage_and_job_config(k8s_version):
    kv, version = k8s_version
    from nldist.jobs import validate_job

    docs = {d["kind"]: d for d in _docs("storage.yaml")}
    assert set(docs) == {"PersistentVolumeClaim", "ConfigMap"}
    for d in docs.values():
        kv.validate(d, version, strict=True)
    assert "ReadWriteMany" in docs["PersistentVolumeClaim"]["spec"]["accessModes"]
    job = validate_job(yaml.safe_load(docs["ConfigMap"]["data"]["job.yaml"]), "job.yaml")
    assert job.cluster.address == "k8s" and job.out.startswith("/data/")
    (dj,) = _docs("daskjob.yaml")
    pod = dj["spec"]["job"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["job"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == \
        docs["PersistentVolumeClaim"]["metadata"]["name"]
    args = pod["containers"][0]["args"]
    assert args[:3] == ["nldist", "run", "/etc/nldist/job.yaml"] and "k8s" in args


def test_kubernetes_validate_rejects_a_bad_pvc(k8s_version):
    kv, version = k8s_version
    docs = {d["kind"]: d for d in _docs("storage.yaml")}
    bad = copy.deepcopy(docs["PersistentVolumeClaim"])
    bad["spec"]["accesModes"] = bad["spec"].pop("accessModes")
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, version, strict=True)


# --- the object-storage variant: no shared volume, credentials from a Secret ---------------

AWS_REQUIRED = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
AWS_OPTIONAL = ("AWS_ENDPOINT_URL",)


def _s3_docs() -> tuple[dict, dict[str, dict]]:
    (dj,) = _docs("daskjob-s3.yaml")
    return dj, {d["kind"]: d for d in _docs("storage-s3.yaml")}


def test_s3_pod_specs_are_valid_pods(k8s_version):
    """The s3 DaskJob's pod templates are valid built-in Pods, its scheduler Service a valid
    Service, with the same resource rules as daskjob.yaml."""
    kv, version = k8s_version
    dj, _ = _s3_docs()
    specs = _pod_specs(dj)
    assert set(specs) == {"job", "scheduler", "worker"}
    for role, spec in specs.items():
        kv.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"nldist-{role}"},
                     "spec": spec}, version, strict=True)
        for c in spec["containers"]:
            res = c["resources"]
            assert set(res) == {"requests", "limits"}, (role, res)
            assert {"cpu", "memory"} <= set(res["requests"]) and set(res["limits"]) >= {"memory"}
        mounts = {m["name"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in spec.get("volumes", [])}, role
    svc = dj["spec"]["cluster"]["spec"]["scheduler"]["service"]
    assert svc["selector"]["dask.org/cluster-name"] == dj["metadata"]["name"]
    kv.validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                 "spec": svc}, version, strict=True)


def test_s3_storage_and_job_config(k8s_version):
    """storage-s3.yaml (Secret + ConfigMap) is valid; its job file passes nldist's own
    validation, reads and writes s3:// only; the job pod runs it as daskjob.yaml does."""
    kv, version = k8s_version
    from nldist.jobs import validate_job

    dj, docs = _s3_docs()
    assert set(docs) == {"Secret", "ConfigMap"}
    for d in docs.values():
        kv.validate(d, version, strict=True)
    job = validate_job(yaml.safe_load(docs["ConfigMap"]["data"]["job.yaml"]), "job.yaml")
    assert job.cluster.address == "k8s"
    assert job.dataset.source.startswith("s3://") and job.out.startswith("s3://")
    pod = dj["spec"]["job"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["job"]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    (c,) = pod["containers"]
    assert {"name": "job", "mountPath": "/etc/nldist", "readOnly": True} in c["volumeMounts"]
    args = c["args"]
    assert args[:3] == ["nldist", "run", "/etc/nldist/job.yaml"]
    assert args[args.index("--cluster") + 1] == "k8s"
    assert args[args.index("--out") + 1] == job.out  # one output URL, not two


def test_s3_secret_is_an_opaque_placeholder():
    _, docs = _s3_docs()
    secret = docs["Secret"]
    assert secret["type"] == "Opaque" and "data" not in secret
    values = secret["stringData"]
    assert set(AWS_REQUIRED) <= set(values) <= set(AWS_REQUIRED + AWS_OPTIONAL)
    assert all(str(v).startswith("PLACEHOLDER") for v in values.values()), values


def _s3_problems(dj: dict, secret: dict) -> list[str]:
    """Why the DaskJob would not run on object storage with ``secret``'s credentials."""
    name, keys = secret["metadata"]["name"], set(secret.get("stringData") or {})
    out = []
    for role, spec in _pod_specs(dj).items():
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v or not {"configMap", "secret", "emptyDir"} & set(v):
                out.append(f"{role}: volume {v['name']} is shared storage")
        for c in spec["containers"]:
            where = f"{role}/{c['name']}"
            env = {e["name"]: e for e in c.get("env", [])}
            from_secret = {r["secretRef"]["name"] for r in c.get("envFrom", [])
                           if "secretRef" in r}
            for src in from_secret - {name}:
                out.append(f"{where}: envFrom a Secret {src!r}, not {name!r}")
            for var in AWS_REQUIRED + AWS_OPTIONAL:
                e = env.get(var)
                if e is None:
                    if not (name in from_secret and (var in keys or var in AWS_OPTIONAL)):
                        out.append(f"{where}: no {var}")
                    continue
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if "value" in e or ref is None:
                    out.append(f"{where}: {var} is not from a Secret")
                elif ref["name"] != name:
                    out.append(f"{where}: {var} from Secret {ref['name']!r}, not {name!r}")
                elif ref["key"] not in keys and not (var in AWS_OPTIONAL and ref.get("optional")):
                    out.append(f"{where}: {var}: key {ref['key']!r} is not in the Secret")
                elif ref["key"] != var:
                    out.append(f"{where}: {var} read from key {ref['key']!r}")
    return out


def test_s3_variant_has_no_shared_volume_and_credentials_from_the_secret():
    """No pod mounts a PersistentVolumeClaim; the runner, the scheduler and the workers all
    get AWS_* from the Secret that storage-s3.yaml defines (AWS_ENDPOINT_URL optional)."""
    dj, docs = _s3_docs()
    assert _s3_problems(dj, docs["Secret"]) == []
    roles = {r for r, s in _pod_specs(dj).items() for c in s["containers"]
             if any(e["name"] == "AWS_ACCESS_KEY_ID" for e in c.get("env", []))}
    assert roles == {"job", "scheduler", "worker"}
    text = (K8S / "daskjob-s3.yaml").read_text()
    assert "persistentVolumeClaim" not in text and "/data" not in text


def test_s3_check_catches_mistakes():
    """The same check flags a claim mounted again, a literal key, another Secret's name and
    a container left without credentials."""
    dj, docs = _s3_docs()
    secret = docs["Secret"]
    bad = copy.deepcopy(dj)
    worker = _pod_specs(bad)["worker"]
    worker["volumes"] = [{"name": "data", "persistentVolumeClaim": {"claimName": "nldist-data"}}]
    assert any("shared storage" in p for p in _s3_problems(bad, secret))
    bad = copy.deepcopy(dj)
    (c,) = _pod_specs(bad)["scheduler"]["containers"]
    c["env"][1] = {"name": "AWS_SECRET_ACCESS_KEY", "value": "hunter2"}
    assert any("scheduler" in p and "not from a Secret" in p for p in _s3_problems(bad, secret))
    other = copy.deepcopy(secret)
    other["metadata"]["name"] = "another"
    assert any("not 'another'" in p for p in _s3_problems(dj, other))
    bad = copy.deepcopy(dj)
    (c,) = _pod_specs(bad)["job"]["containers"]
    del c["env"]
    assert any(p.startswith("job/job: no AWS_ACCESS_KEY_ID") for p in _s3_problems(bad, secret))
    bad = copy.deepcopy(dj)  # envFrom the whole Secret is fine too
    (c,) = _pod_specs(bad)["worker"]["containers"]
    c["env"] = [e for e in c["env"] if not e["name"].startswith("AWS_")]
    c["envFrom"] = [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert _s3_problems(bad, secret) == []


def _pip_lines() -> list[str]:
    text = (K8S / "Dockerfile").read_text().replace("\\\n", " ")
    return [m.group(1).strip() for m in re.finditer(r"^RUN\s+(pip install .*)$", text, re.M)]


def test_dockerfile_pins_cpu_torch_and_copies_what_exists():
    text = (K8S / "Dockerfile").read_text()
    lines = _pip_lines()
    assert any("download.pytorch.org/whl/cpu" in x and "torch==2.13.0" in x for x in lines)
    assert any('"/src[k8s]"' in x for x in lines)
    for m in re.finditer(r"^COPY\s+(.+)\s+(\S+)$", text, re.M):
        for src in m.group(1).split():
            assert (ROOT / src).exists(), src
    from nldist.jobs import K8sConfig

    images = {c["image"] for f in ("daskjob.yaml", "daskcluster.yaml", "daskjob-s3.yaml")
              for d in _docs(f)
              for s in _pod_specs(d).values() for c in s["containers"]}
    assert images == {K8sConfig().image}


@pytest.mark.slow
def test_dockerfile_pip_install_in_fresh_venv(tmp_path):
    """The Dockerfile's pip lines in a fresh venv (about 70 s here).

    The torch line is installed for real (PyTorch's CPU index is not reachable from here, so
    it is swapped for this machine's copy of the same CPU wheel); the nldist line is resolved
    with ``--dry-run --report`` against the package index: every dependency resolves and no
    other torch (no CUDA build) is pulled in.
    """
    if os.environ.get("NLDIST_SKIP_IMAGE_TEST"):
        pytest.skip("NLDIST_SKIP_IMAGE_TEST is set")
    import json

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    t0 = time.perf_counter()
    torch_line, nldist_line = _pip_lines()
    args = shlex.split(torch_line)
    i = args.index("--index-url")
    del args[i : i + 2]
    proc = subprocess.run([str(py), "-m", *args, "-q", "--no-cache-dir"], timeout=600,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = tmp_path / "report.json"
    args = shlex.split(nldist_line.replace("/src", str(ROOT)))
    proc = subprocess.run([str(py), "-m", *args, "-q", "--no-cache-dir", "--dry-run",
                           "--report", str(report)], timeout=600, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"nldist", "dask", "distributed", "zarr", "dask-kubernetes"} <= names, names
    assert not {n for n in names if n == "torch" or n.startswith("nvidia")}, names
    out = subprocess.run([str(py), "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert out.strip() == "2.13.0+cpu", out
    print(f"fresh-venv install: {time.perf_counter() - t0:.0f} s")
