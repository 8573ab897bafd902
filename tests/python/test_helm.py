"""The Helm chart helm/llmstack, with Helm's own Go SDK (helm-python-sdk: lint, template, install).

- lint: the chart with its defaults and with every examples/values-*.yaml;
- values.schema.json: accepts those values, rejects bad ones;
- render: what each example produces (engines, router flags, RBAC, PDB, HPA, KEDA, dashboards);
- every rendered object against the Kubernetes 1.33 schemas (kubernetes-validate, strict);
- every object rendered for a real kube-apiserver v1.20.2 (etcd + apiserver on loopback, the
  `kube_apiserver` fixture) POSTed with ?dryRun=All, including the 1.20 fallbacks
  (policy/v1beta1 PDB, autoscaling/v2beta2 HPA) chosen through .Capabilities;
- the simulator example installed into that apiserver, with this test playing the controllers
  and the kubelet: a pod per replica, llmstack-sim started with the pod's rendered args, the
  router started with its rendered args and the ServiceAccount token the chart's RBAC grants,
  then /engines and a chat completion through the official openai client.

CRD kinds (ServiceMonitor, ScaledObject, Gateway API's HTTPRoute) have no Kubernetes schema: they
are checked offline against the trimmed CRD schemas below (the fields the chart uses, with
prometheus-operator's, KEDA's and Gateway API's types; unknown fields rejected). The CRDs are
registered in a second apiserver so that .Capabilities sees monitoring.coreos.com/v1 and the
ServiceMonitors render, but custom resources
themselves are not POSTed: this 1.20 build (Go 1.19 with the reflect2 Kubernetes 1.20 vendors)
crashes with SIGSEGV in json-iterator's sorted-map encoder on any custom-resource create, the
same fault as its pretty-printing.
"""

import base64
import copy
import json
import os
import pathlib
import re
import select
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import jsonschema
import kubernetes_validate
import openai
import pytest
import yaml

import helm_python as helm
from conftest import SERVER, BINARY as SIM, KubeApiServer, Router, free_loopback_ports, stop_process

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llmstack"
EXAMPLES = ["minimal", "multiple-models", "simulator", "session-routing", "prefix-routing"]
K8S_VERSION = "1.33.0"
RELEASE, NAMESPACE = "demo", "llm"
APP_VERSION = "0.1.0"

# Every option at once: vLLM with a ReadWriteMany PVC (shared by the replicas KEDA scales),
# HF token and API key as strings (the chart's Secret), LMCache with CPU and disk offload,
# tensor parallelism (/dev/shm), scheduling fields, KEDA; the router autoscaled on CPU and
# in-flight requests with a PDB; ServiceMonitors and dashboards; clients' API keys (a second Secret).
FULL = {
    "commonLabels": {"team": "ml"},
    "imagePullSecrets": ["regcred"],
    "servingEngineSpec": {
        "vllmApiKey": "sk-engine",
        "runtimeClassName": "nvidia",
        "labels": {"tier": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "modelSpec": [
            {
                "name": "llama3",
                "repository": "vllm/vllm-openai",
                "tag": "v0.33.0",
                "modelURL": "meta-llama/Llama-3.1-70B-Instruct",
                "replicaCount": 2,
                "requestCPU": 8,
                "requestMemory": "64Gi",
                "requestGPU": 2,
                "limitMemory": "96Gi",
                "pvcStorage": "200Gi",
                "pvcAccessMode": "ReadWriteMany",
                "storageClass": "fast",
                "shmSize": "32Gi",
                "vllmConfig": {
                    "maxModelLen": 32768,
                    "dtype": "bfloat16",
                    "tensorParallelSize": 2,
                    "enablePrefixCaching": True,
                    "maxNumSeqs": 256,
                    "gpuMemoryUtilization": 0.92,
                    "extraArgs": ["--disable-log-requests"],
                },
                "lmcacheConfig": {"enabled": True, "cpuOffloadingBufferSize": "40", "diskOffloadingBufferSize": "100",
                                  "logLevel": "INFO"},
                "hf_token": "hf_secret_value",
                "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}],
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]}
                ],
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
                "podAnnotations": {"example.com/owner": "ml"},
                "keda": {"enabled": True, "minReplicaCount": 1, "maxReplicaCount": 6, "threshold": 4},
            },
            {
                "name": "small",
                "repository": "vllm/vllm-openai",
                "tag": "v0.33.0",
                "modelURL": "facebook/opt-125m",
                "requestGPU": 1,
                "vllmConfig": {"enablePrefixCaching": False},
                "hf_token": {"secretName": "hf", "secretKey": "token"},
            },
        ],
    },
    "routerSpec": {
        "routingLogic": "session",
        "sessionKey": "x-user-id",
        "aliases": {"gpt-4o": "meta-llama/Llama-3.1-70B-Instruct"},
        "extraArgs": ["--health-check-failure-threshold", "3"],
        "env": [{"name": "RUST_BACKTRACE", "value": "1"}],
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 5, "targetInFlightRequests": 64},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "apiKeys": {"keys": [
            {"key": "sk-team-a", "tenant": "team-a", "priority": "high", "rpm": 600, "tpm": 200000},
            {"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "tenant": "batch",
             "priority": "low"},
        ]},
    },
}


# --routing-logic kvaware on the simulator: the engines' KV events on other ports and topic than
# the defaults; one model's tokenizer from a volume (a PVC of tokenizer directories), the other
# model's from a Hugging Face cache (another PVC).
LLAMA, QWEN = "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"
KVAWARE = {
    "servingEngineSpec": {
        "engine": "sim",
        "simProfile": "instant",
        "kvEvents": {"port": 5600, "replayPort": 5601, "topic": "kv"},
        "modelSpec": [
            {"name": "llama3", "modelURL": LLAMA, "replicaCount": 2},
            {"name": "qwen", "modelURL": QWEN},
        ],
    },
    "routerSpec": {
        "routingLogic": "kvaware",
        "tokenizers": [{"model": LLAMA, "path": "/tokenizers/llama3"}],
        "tokenizerVolume": {"persistentVolumeClaim": {"claimName": "tokenizers", "readOnly": True}},
        "hfCache": {"persistentVolumeClaim": {"claimName": "hf-cache", "readOnly": True}},
    },
}


def example_values(name):
    return helm.values_from_yaml((ROOT / "examples" / f"values-{name}.yaml").read_text())


CASES = {"default": {}, **{name: example_values(name) for name in EXAMPLES}, "full": FULL, "kvaware": KVAWARE}


def parse_manifests(texts):
    """The objects of rendered templates (NOTES.txt and empty documents left out)."""
    objects = []
    for path, text in sorted(texts.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {})
                objects.append(doc)
    return objects


def render(values, name=RELEASE, namespace=NAMESPACE, chart=CHART):
    """`helm template`: offline, with Helm's default capabilities (every built-in API version,
    no CRDs)."""
    with helm.Chart.load(str(chart)) as c:
        return parse_manifests(c.render(values, name=name, namespace=namespace))


def notes(values, name=RELEASE, namespace=NAMESPACE):
    with helm.Chart.load(str(CHART)) as c:
        texts = c.render(values, name=name, namespace=namespace)
    return next(text for path, text in texts.items() if path.endswith("NOTES.txt"))


def of_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind, name):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return found[0]


def flag(args, name):
    """The value after `name` in an argument list (None when absent); fails on duplicates."""
    hits = [i for i, a in enumerate(args) if a == name]
    assert len(hits) <= 1, f"{name} given {len(hits)} times: {args}"
    return args[hits[0] + 1] if hits else None


def help_flags(binary):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"(--[a-z0-9][a-z0-9-]*)", out.stdout))


def pod_containers(obj):
    spec = obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]
    return spec.get("containers", []) + spec.get("initContainers", [])


def all_ports(obj):
    if obj["kind"] == "Service":
        return obj["spec"]["ports"]
    if obj["kind"] in ("Deployment", "Pod"):
        return [p for c in pod_containers(obj) for p in c.get("ports", [])]
    return []


def selector_matches(selector, labels):
    """A --k8s-label-selector made of `k=v` terms against a label map."""
    for term in selector.split(","):
        key, value = term.split("=", 1)
        if labels.get(key.strip()) != value.strip():
            return False
    return True


# --- 1. lint ------------------------------------------------------------------------------------

# The only finding allowed: Helm recommends an icon (shown by chart repositories such as Artifact
# Hub); the project has no logo yet, and a made-up URL would be worse than none.
ALLOWED_LINT = {(1, "Chart.yaml", "icon is recommended")}


@pytest.mark.parametrize("case", list(CASES))
def test_lint_is_clean(case):
    for kube_version in ("v1.20.2", "v1.33.0"):
        report = helm.lint(str(CHART), CASES[case], strict=True, namespace=NAMESPACE, kube_version=kube_version)
        assert report["total_charts_linted"] == 1
        assert report["errors"] == [], report
        found = {(m["severity"], m["path"], m["error"]) for m in report["messages"]}
        assert found <= ALLOWED_LINT, report


def test_lint_reports_bad_values():
    report = helm.lint(str(CHART), {"routerSpec": {"routingLogic": "fastest"}})
    assert report["errors"], report
    assert any("routingLogic" in e for e in report["errors"]), report


# --- 2. values.schema.json and render -------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_schema_accepts(case):
    with helm.Chart.load(str(CHART)) as c:
        assert c.schema["$schema"] == "http://json-schema.org/draft-07/schema#"
        c.validate_schema(c.merge_values(CASES[case]))


def model(**kw):
    return {"name": "m", "modelURL": "org/model", "repository": "vllm/vllm-openai", "tag": "v0.33.0", **kw}


BAD_VALUES = {
    "routingLogic: bogus": ({"routerSpec": {"routingLogic": "bogus"}}, "/routerSpec/routingLogic"),
    "modelSpec replicaCount: -1": (
        {"servingEngineSpec": {"modelSpec": [model(replicaCount=-1)]}},
        "/servingEngineSpec/modelSpec/0/replicaCount",
    ),
    "router replicaCount: -1": ({"routerSpec": {"replicaCount": -1}}, "/routerSpec/replicaCount"),
    "modelSpec entry without name": (
        {"servingEngineSpec": {"modelSpec": [{"modelURL": "org/model", "repository": "r", "tag": "t"}]}},
        "missing property 'name'",
    ),
    "modelSpec entry without modelURL": (
        {"servingEngineSpec": {"modelSpec": [{"name": "m", "repository": "r", "tag": "t"}]}},
        "missing property 'modelURL'",
    ),
    "vllm engine without image": (
        {"servingEngineSpec": {"modelSpec": [{"name": "m", "modelURL": "org/model"}]}},
        "'repository', 'tag'",
    ),
    "engine: bogus": ({"servingEngineSpec": {"engine": "tgi"}}, "/servingEngineSpec/engine"),
    "name not a DNS label": (
        {"servingEngineSpec": {"modelSpec": [model(name="Llama_3")]}},
        "/servingEngineSpec/modelSpec/0/name",
    ),
    "unknown modelSpec key": (
        {"servingEngineSpec": {"modelSpec": [model(replicas=2)]}},
        "replicas",
    ),
    "unknown top-level key": ({"routerSpecs": {}}, "routerSpecs"),
    "gpuMemoryUtilization > 1": (
        {"servingEngineSpec": {"modelSpec": [model(vllmConfig={"gpuMemoryUtilization": 1.5})]}},
        "gpuMemoryUtilization",
    ),
    "requestGPU: -1": ({"servingEngineSpec": {"modelSpec": [model(requestGPU=-1)]}}, "requestGPU"),
    "requestMemory not a quantity": (
        {"servingEngineSpec": {"modelSpec": [model(requestMemory="lots")]}},
        "requestMemory",
    ),
    "hf_token ref without key": (
        {"servingEngineSpec": {"modelSpec": [model(hf_token={"secretName": "hf"})]}},
        "hf_token",
    ),
    "engineStatsInterval: 0": ({"routerSpec": {"engineStatsInterval": 0}}, "engineStatsInterval"),
    "containerPort: 70000": ({"servingEngineSpec": {"containerPort": 70000}}, "containerPort"),
    "logFormat: xml": ({"routerSpec": {"logFormat": "xml"}}, "logFormat"),
    "keda minReplicaCount: -1": (
        {"servingEngineSpec": {"modelSpec": [model(keda={"enabled": True, "minReplicaCount": -1})]}},
        "/servingEngineSpec/modelSpec/0/keda/minReplicaCount",
    ),
    # The router would reference a ServiceAccount that nothing creates.
    "serviceAccount.create: false without a name": (
        {"routerSpec": {"serviceAccount": {"create": False}}},
        "/routerSpec/serviceAccount/name",
    ),
    # What llmstack-server refuses in a keys file (it would exit at start).
    "apiKeys rpm: 0": (
        {"routerSpec": {"apiKeys": {"keys": [{"key": "sk-1", "rpm": 0}]}}}, "/routerSpec/apiKeys/keys/0/rpm"),
    "apiKeys priority: urgent": (
        {"routerSpec": {"apiKeys": {"keys": [{"key": "sk-1", "priority": "urgent"}]}}},
        "/routerSpec/apiKeys/keys/0/priority"),
    "apiKeys entry with key and sha256": (
        {"routerSpec": {"apiKeys": {"keys": [{"key": "sk-1", "sha256": "0" * 64}]}}}, "/routerSpec/apiKeys/keys/0"),
    "apiKeys entry without key": (
        {"routerSpec": {"apiKeys": {"keys": [{"tenant": "a"}]}}}, "/routerSpec/apiKeys/keys/0"),
    "apiKeys sha256 not hex": (
        {"routerSpec": {"apiKeys": {"keys": [{"sha256": "sk-1"}]}}}, "/routerSpec/apiKeys/keys/0/sha256"),
    "apiKeys key with a space": (
        {"routerSpec": {"apiKeys": {"keys": [{"key": "sk 1"}]}}}, "/routerSpec/apiKeys/keys/0/key"),
    "apiKeys unknown entry field": (
        {"routerSpec": {"apiKeys": {"keys": [{"key": "sk-1", "limit": 5}]}}}, "limit"),
    # The kubelet refuses item paths starting with `..` (its own ..data link).
    "apiKeys secretKey ..data": (
        {"routerSpec": {"apiKeys": {"existingSecret": "k", "secretKey": "..data"}}}, "/routerSpec/apiKeys/secretKey"),
    "kvEvents replayPort: -1": (
        {"servingEngineSpec": {"kvEvents": {"replayPort": -1}}}, "/servingEngineSpec/kvEvents/replayPort"),
    "kvEvents unknown key": ({"servingEngineSpec": {"kvEvents": {"replay": 5558}}}, "replay"),
    "tokenizers entry without path": (
        {"routerSpec": {"tokenizers": [{"model": "m"}]}}, "missing property 'path'"),
    "tokenizers unknown entry field": (
        {"routerSpec": {"tokenizers": [{"model": "m", "path": "/t", "revision": "main"}]}}, "revision"),
    # `--tokenizer MODEL=PATH`: the router splits at the first `=`.
    "tokenizers model with =": (
        {"routerSpec": {"tokenizers": [{"model": "a=b", "path": "/t"}]}}, "/routerSpec/tokenizers/0/model"),
    "tokenizers default path with =": (
        {"routerSpec": {"tokenizers": [{"path": "/t/a=b"}]}}, "/routerSpec/tokenizers/0/path"),
    # A volume source: the chart names the volume.
    "tokenizerVolume with a name": (
        {"routerSpec": {"tokenizerVolume": {"name": "t", "emptyDir": {}}}}, "/routerSpec/tokenizerVolume"),
    "hfCache with two sources": (
        {"routerSpec": {"hfCache": {"emptyDir": {}, "hostPath": {"path": "/hf"}}}}, "/routerSpec/hfCache"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_schema_rejects(case):
    values, message = BAD_VALUES[case]
    with helm.Chart.load(str(CHART)) as c:
        with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
            c.validate_schema(c.merge_values(values))
        # `helm template` / `helm install` refuse them the same way.
        with pytest.raises(helm.HelmError):
            c.render(values, name=RELEASE, namespace=NAMESPACE)


def test_template_errors_beyond_the_schema():
    """What JSON Schema cannot say, the templates refuse with a clear message."""
    with helm.Chart.load(str(CHART)) as c:
        with pytest.raises(helm.HelmError, match="used twice"):
            c.render({"servingEngineSpec": {"modelSpec": [model(), model()]}}, name=RELEASE)
        with pytest.raises(helm.HelmError, match="targetCPUUtilizationPercentage or targetInFlightRequests"):
            c.render(
                {"routerSpec": {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": 0}}},
                name=RELEASE,
            )


# What the templates refuse (values the schema accepts): case -> (values, message, release name).
TEMPLATE_ERRORS = {
    # (Several replicas on a ReadWriteOnce PVC render, with a warning: test_helm_production_stack.py.)
    "RWOP PVC with 2 replicas": (
        {"servingEngineSpec": {"modelSpec": [model(replicaCount=2, pvcStorage="50Gi",
                                                   pvcAccessMode="ReadWriteOncePod")]}},
        "servingEngineSpec.modelSpec[m]: 2 replicas with a ReadWriteOncePod PVC", RELEASE),
    "RWOP PVC with KEDA": (
        {"servingEngineSpec": {"modelSpec": [model(pvcStorage="50Gi", pvcAccessMode=["ReadWriteOncePod"],
                                                   keda={"enabled": True})]}},
        "servingEngineSpec.modelSpec[m]: 4 replicas with a ReadWriteOncePod PVC", RELEASE),
    # From zero engines, nothing would scale them back up: the default trigger's metric comes from them.
    "keda minReplicaCount 0 without triggers": (
        {"servingEngineSpec": {"modelSpec": [model(keda={"enabled": True, "minReplicaCount": 0})]}},
        "servingEngineSpec.modelSpec[m].keda.minReplicaCount 0: the default trigger's queue metric comes from "
        "the engines", RELEASE),
    "requestGPU below tensorParallelSize": (
        {"servingEngineSpec": {"modelSpec": [model(requestGPU=1, vllmConfig={"tensorParallelSize": 2})]}},
        "requestGPU (1) is less than vllmConfig.tensorParallelSize (2)", RELEASE),
    "engine names equal after truncation": (
        {"fullnameOverride": "x" * 50, "servingEngineSpec": {"modelSpec": [
            model(name="aaaaaaaaaaaa-one"), model(name="aaaaaaaaaaaa-two")]}},
        'engine name "' + "x" * 50 + '-aaaaaaaaaaaa" (<fullname>-<model name>-engine, truncated to 63 characters) '
        "is also the name of servingEngineSpec.modelSpec[aaaaaaaaaaaa-one]'s engines", RELEASE),
    "commonLabels overriding a selector label": (
        {"commonLabels": {"app.kubernetes.io/instance": "other"}},
        'commonLabels: the label "app.kubernetes.io/instance" is set by the chart', RELEASE),
    "engine labels overriding model": (
        {"servingEngineSpec": {"labels": {"model": "other"}, "modelSpec": [model()]}},
        'servingEngineSpec.labels: the label "model" is set by the chart', RELEASE),
    "modelSpec labels overriding component": (
        {"servingEngineSpec": {"modelSpec": [model(labels={"app.kubernetes.io/component": "x"})]}},
        'servingEngineSpec.modelSpec[m].labels: the label "app.kubernetes.io/component"', RELEASE),
    "router labels overriding name": (
        {"routerSpec": {"labels": {"app.kubernetes.io/name": "x"}}},
        'routerSpec.labels: the label "app.kubernetes.io/name"', RELEASE),
    "router extraArgs repeating --routing-logic": (
        {"routerSpec": {"extraArgs": ["--routing-logic", "random"]}},
        "routerSpec.extraArgs: --routing-logic is already passed by the chart (its value comes from "
        "routerSpec.routingLogic)", RELEASE),
    "router extraArgs repeating --k8s-port=": (
        {"routerSpec": {"extraArgs": ["--k8s-port=9000"]}},
        "routerSpec.extraArgs: --k8s-port is already passed by the chart", RELEASE),
    "router extraArgs repeating a set --session-key": (
        {"routerSpec": {"sessionKey": "x-user", "extraArgs": ["--session-key", "y"]}},
        "routerSpec.extraArgs: --session-key is already passed", RELEASE),
    "simExtraArgs repeating --speedup": (
        {"servingEngineSpec": {"engine": "sim", "simExtraArgs": ["--speedup", "4"], "modelSpec": [model()]}},
        "servingEngineSpec.simExtraArgs (model m): --speedup is already passed by the chart", RELEASE),
    "simExtraArgs repeating a set --max-model-len": (
        {"servingEngineSpec": {"engine": "sim", "simExtraArgs": ["--max-model-len=4096"],
                               "modelSpec": [model(vllmConfig={"maxModelLen": 8192})]}},
        "--max-model-len is already passed by the chart", RELEASE),
    "apiKeys with keys and existingSecret": (
        {"routerSpec": {"apiKeys": {"keys": [{"key": "sk-1"}], "existingSecret": "mine"}}},
        "routerSpec.apiKeys: set either keys (the chart stores them in a Secret) or existingSecret", RELEASE),
    "router extraArgs repeating --api-keys-file": (
        {"routerSpec": {"apiKeys": {"existingSecret": "mine"}, "extraArgs": ["--api-keys-file=/k"]}},
        "routerSpec.extraArgs: --api-keys-file is already passed by the chart (its value comes from "
        "routerSpec.apiKeys)", RELEASE),
    # A key and the sha256 of the same key (`printf test | sha256sum`): the router refuses duplicates.
    "apiKeys key listed twice": (
        {"routerSpec": {"apiKeys": {"keys": [
            {"key": "other"}, {"key": "test", "tenant": "a"},
            {"sha256": "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08", "tenant": "b"}]}}},
        "routerSpec.apiKeys.keys[2]: the same key as keys[1]", RELEASE),
    "apiKeys tenant with two limits": (
        {"routerSpec": {"apiKeys": {"keys": [{"key": "sk-1", "tenant": "a", "rpm": 10},
                                             {"key": "sk-2", "tenant": "a", "rpm": 20}]}}},
        'routerSpec.apiKeys.keys[1]: tenant "a" has priority normal, rpm 20, tpm none, but an earlier entry gives '
        "it priority normal, rpm 10, tpm none", RELEASE),
    "apiKeys default tenant with two priorities": (
        {"routerSpec": {"apiKeys": {"keys": [{"key": "sk-1"}, {"key": "sk-2", "priority": "low"}]}}},
        'routerSpec.apiKeys.keys[1]: tenant "default" has priority low', RELEASE),
    # <fullname>-api-keys and <fullname>-secrets, both truncated to the same 63 characters.
    "apiKeys Secret named as the chart's Secret": (
        {"fullnameOverride": "x" * 62, "servingEngineSpec": {"vllmApiKey": "sk-e"},
         "routerSpec": {"apiKeys": {"keys": [{"key": "sk-1"}]}}},
        "routerSpec.apiKeys: the Secret of the API keys and the chart's other Secret would both be named", RELEASE),
    # kvaware routes on the engines' KV events: without them it would never see a cached block.
    "kvaware with kvEvents off": (
        {"servingEngineSpec": {"kvEvents": {"enabled": False}, "modelSpec": [model()]},
         "routerSpec": {"routingLogic": "kvaware"}},
        "routerSpec.routingLogic kvaware routes on the engines' KV-cache events, but "
        "servingEngineSpec.kvEvents.enabled is false: set servingEngineSpec.kvEvents.enabled: true", RELEASE),
    "kvaware with kvEvents off and no engines": (
        {"servingEngineSpec": {"enableEngine": False, "kvEvents": {"enabled": False}},
         "routerSpec": {"routingLogic": "kvaware"}},
        "servingEngineSpec.kvEvents.enabled is false: set servingEngineSpec.kvEvents.enabled: true", RELEASE),
    "kvaware with a model's prefix caching off": (
        {"servingEngineSpec": {"modelSpec": [model(name="a"), model(name="b", vllmConfig={
            "enablePrefixCaching": False})]}, "routerSpec": {"routingLogic": "kvaware"}},
        "routerSpec.routingLogic kvaware routes on the engines' KV-cache events, but "
        "servingEngineSpec.modelSpec[b] has vllmConfig.enablePrefixCaching: false, so its engines publish none: "
        "remove it (prefix caching is on by default), or pick another routingLogic", RELEASE),
    "kvEvents replayPort = port": (
        {"servingEngineSpec": {"kvEvents": {"port": 5557, "replayPort": 5557}, "modelSpec": [model()]}},
        "servingEngineSpec.kvEvents.replayPort 5557 is also the KV-event PUB port (servingEngineSpec.kvEvents.port)",
        RELEASE),
    "kvEvents port = containerPort": (
        {"servingEngineSpec": {"kvEvents": {"port": 8000}, "modelSpec": [model()]}},
        "servingEngineSpec.kvEvents.port 8000 is also servingEngineSpec.containerPort", RELEASE),
    "kvEvents replayPort = containerPort (router only)": (
        {"servingEngineSpec": {"enableEngine": False, "kvEvents": {"replayPort": 8000}},
         "routerSpec": {"routingLogic": "kvaware"}},
        "servingEngineSpec.kvEvents.replayPort 8000 is also the engines' HTTP port", RELEASE),
    "tokenizers model listed twice": (
        {"routerSpec": {"routingLogic": "kvaware", "tokenizers": [
            {"model": "org/m", "path": "/a"}, {"path": "/d"}, {"model": "org/m", "path": "/b"}]}},
        'routerSpec.tokenizers[2]: model "org/m" already has a tokenizer (tokenizers[0])', RELEASE),
    "tokenizers two defaults": (
        {"routerSpec": {"routingLogic": "kvaware", "tokenizers": [{"path": "/a"}, {"path": "/b"}]}},
        "routerSpec.tokenizers[1]: a second entry without model", RELEASE),
    "router extraArgs repeating --kv-events-port": (
        {"routerSpec": {"routingLogic": "kvaware", "extraArgs": ["--kv-events-port=6000"]}},
        "routerSpec.extraArgs: --kv-events-port is already passed by the chart (its value comes from "
        "servingEngineSpec.kvEvents.port)", RELEASE),
    "router extraArgs repeating --kv-events-topic": (
        {"routerSpec": {"routingLogic": "kvaware", "extraArgs": ["--kv-events-topic", "x"]}},
        "routerSpec.extraArgs: --kv-events-topic is already passed", RELEASE),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TEMPLATE_ERRORS))
def test_template_refuses(case):
    values, message, name = TEMPLATE_ERRORS[case]
    with helm.Chart.load(str(CHART)) as c:
        c.validate_schema(c.merge_values(values))  # the schema accepts them ...
        with pytest.raises(helm.HelmError, match=re.escape(message)):  # ... the templates do not
            c.render(values, name=name, namespace=NAMESPACE)


def test_template_accepts_the_neighbours_of_refused_values(router_help_flags, sim_help_flags):
    """The limits of the refusals above: what is still allowed, and renders as expected."""
    # One replica on a ReadWriteOnce claim, or KEDA that never goes above 1; a repeatable flag.
    objects = render({"servingEngineSpec": {"modelSpec": [
        model(name="a", pvcStorage="50Gi"),
        model(name="b", pvcStorage="50Gi", keda={"enabled": True, "maxReplicaCount": 1}),
        model(name="c", pvcStorage="50Gi", pvcAccessMode="ReadWriteMany", replicaCount=3)]}})  # fmt: skip
    assert one(objects, "Deployment", "demo-llmstack-a-engine")["spec"]["strategy"] == {"type": "Recreate"}
    assert one(objects, "Deployment", "demo-llmstack-b-engine")["spec"]["strategy"] == {"type": "Recreate"}
    assert "strategy" not in one(objects, "Deployment", "demo-llmstack-c-engine")["spec"]
    # Router flags the chart passes only when their value is set are free otherwise.
    objects = render({"routerSpec": {"extraArgs": ["--session-key", "x-user", "--health-check-failure-threshold=3"]}})
    args = one(objects, "Deployment", "demo-llmstack-router")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--session-key") == "x-user"
    # --api-keys-file is the chart's only with routerSpec.apiKeys; --api-keys (more keys, of the
    # tenant `default`) adds to the file's.
    objects = render({"routerSpec": {"extraArgs": ["--api-keys-file", "/keys/k.yaml"]}})
    assert flag(router_pod(objects)["containers"][0]["args"], "--api-keys-file") == "/keys/k.yaml"
    objects = render({"routerSpec": {"apiKeys": {"keys": [{"key": "sk-1"}]}, "extraArgs": ["--api-keys=sk-2"]}})
    assert "--api-keys=sk-2" in router_pod(objects)["containers"][0]["args"]
    sim = render({"servingEngineSpec": {"engine": "sim", "simExtraArgs": ["--max-model-len", "4096"],
                                        "modelSpec": [model()]}})
    sargs = one(sim, "Deployment", "demo-llmstack-m-engine")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(sargs, "--max-model-len") == "4096"
    assert {a for a in sargs if a.startswith("--")} <= sim_help_flags


def test_chart_flags_are_the_ones_checked(router_help_flags):
    """Every flag the router template passes is in its extraArgs refusal list (so a new flag
    cannot be added without it), and each one really is refused by llmstack-server when repeated."""
    every = {"sessionKey": "x", "prefixMinMatchLength": 8, "aliases": {"a": "b"},
             "apiKeys": {"existingSecret": "keys"}, "routingLogic": "kvaware",
             "tokenizers": [{"model": "a", "path": "/t/a"}, {"path": "/t/any"}], "replicaCount": 2}
    objects = render({"routerSpec": every})
    args = one(objects, "Deployment", "demo-llmstack-router")["spec"]["template"]["spec"]["containers"][0]["args"]
    passed = [a for a in args if a.startswith("--")]
    assert len(passed) == 22 and passed.count("--tokenizer") == 2 and "--peers" in passed
    # --tokenizer is repeatable: more in extraArgs are the router's to take.
    for f in sorted(set(passed) - {"--tokenizer"}):
        with pytest.raises(helm.HelmError, match=re.escape(f"routerSpec.extraArgs: {f} is already passed")):
            render({"routerSpec": {**every, "extraArgs": [f, "1"]}})
    extra = render({"routerSpec": {**every, "extraArgs": ["--tokenizer", "b=/t/b"]}})
    assert one(extra, "Deployment", "demo-llmstack-router")["spec"]["template"]["spec"]["containers"][0][
        "args"][-2:] == ["--tokenizer", "b=/t/b"]
    out = subprocess.run([SERVER, "--log-level", "info", "--log-level", "info"], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode != 0 and "cannot be used multiple times" in out.stderr


def test_engine_replica_count_zero():
    """replicaCount: 0 (allowed by the schema) stays 0: `default 1` would turn it into 1."""
    values = {"servingEngineSpec": {"modelSpec": [model(replicaCount=0), model(name="n")]}}
    objects = render(values)
    assert one(objects, "Deployment", "demo-llmstack-m-engine")["spec"]["replicas"] == 0
    assert one(objects, "Deployment", "demo-llmstack-n-engine")["spec"]["replicas"] == 1
    text = notes(values)
    assert "  - m: org/model x 0 (Deployment" in text and "  - n: org/model x 1 (Deployment" in text
    keda = notes({"servingEngineSpec": {"modelSpec": [model(keda={"enabled": True, "maxReplicaCount": 6})]}})
    assert "  - m: org/model x 1..6 (KEDA) (Deployment" in keda


def test_tensor_parallel_requests_its_gpus():
    """tensorParallelSize without requestGPU requests one GPU per worker; requestGPU, when set,
    wins (and may not be lower: TEMPLATE_ERRORS); no tensorParallelSize and no requestGPU: none."""
    objects = render({"servingEngineSpec": {"modelSpec": [
        model(name="tp", vllmConfig={"tensorParallelSize": 2}),
        model(name="more", requestGPU=4, vllmConfig={"tensorParallelSize": 2}),
        model(name="cpu")]}})  # fmt: skip

    def resources(name):
        return one(objects, "Deployment", f"demo-llmstack-{name}-engine")["spec"]["template"]["spec"]["containers"][0][
            "resources"]

    assert resources("tp") == {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}
    assert resources("more") == {"requests": {"nvidia.com/gpu": "4"}, "limits": {"nvidia.com/gpu": "4"}}
    assert resources("cpu") == {}
    # The simulator has no GPUs, whatever vllmConfig says.
    sim = render({"servingEngineSpec": {"engine": "sim", "modelSpec": [model(vllmConfig={"tensorParallelSize": 2})]}})
    c = one(sim, "Deployment", "demo-llmstack-m-engine")["spec"]["template"]["spec"]["containers"][0]
    assert "gpu" not in json.dumps(c["resources"])


def test_lmcache_disk_offload_without_disk_size():
    """LMCACHE_LOCAL_DISK and its volume come only with a disk size (FULL has one)."""
    objects = render({"servingEngineSpec": {"modelSpec": [model(lmcacheConfig={"enabled": True,
                                                                               "cpuOffloadingBufferSize": 5})]}})
    pod = one(objects, "Deployment", "demo-llmstack-m-engine")["spec"]["template"]["spec"]
    names = {e["name"] for e in pod["containers"][0]["env"]}
    assert "LMCACHE_LOCAL_CPU" in names and not names & {"LMCACHE_LOCAL_DISK", "LMCACHE_MAX_LOCAL_DISK_SIZE"}
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]


@pytest.mark.parametrize("name", ["405", "no", "on", "true", "1e3", "0x1f"])
def test_label_values_that_yaml_reads_as_scalars_stay_strings(name):
    """Model and release names that YAML reads as numbers or booleans (they match the schema's DNS
    label pattern) stay strings in every label and selector, and the objects stay valid."""
    values = {"servingEngineSpec": {"modelSpec": [model(name=name)]}, "commonLabels": {"team": "no"}}
    objects = render(values, name=name)
    assert objects
    for obj in objects:
        validate_offline(obj)
        labels = obj["metadata"]["labels"]
        assert all(isinstance(v, str) for v in labels.values()), labels
        assert labels["app.kubernetes.io/instance"] == name and labels["team"] == "no"
    dep = one(objects, "Deployment", f"{name}-llmstack-{name}-engine")
    assert dep["metadata"]["labels"]["model"] == name
    assert dep["spec"]["selector"]["matchLabels"]["model"] == name
    assert dep["spec"]["template"]["metadata"]["labels"]["model"] == name
    assert one(objects, "Service", f"{name}-llmstack-{name}-engine")["spec"]["selector"]["model"] == name
    args = one(objects, "Deployment", f"{name}-llmstack-router")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"app.kubernetes.io/instance={name}," in flag(args, "--k8s-label-selector")


def test_engine_labels_merge_on_pods_and_services():
    """servingEngineSpec.labels and a model's labels are on the pods and the engine Service; a key in
    both is the model's, once (no duplicate key)."""
    objects = render({"servingEngineSpec": {"labels": {"tier": "gpu", "cost": "shared"},
                                            "modelSpec": [model(labels={"cost": "team-a"})]}})
    dep = one(objects, "Deployment", "demo-llmstack-m-engine")
    service = one(objects, "Service", "demo-llmstack-m-engine")
    for labels in (dep["spec"]["template"]["metadata"]["labels"], service["metadata"]["labels"]):
        assert (labels["tier"], labels["cost"], labels["model"]) == ("gpu", "team-a", "m")
    assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    with helm.Chart.load(str(CHART)) as c:
        text = c.render({"servingEngineSpec": {"labels": {"cost": "a"}, "modelSpec": [model(labels={"cost": "b"})]}},
                        name=RELEASE, namespace=NAMESPACE)
    for path in ("llmstack/templates/engine-deployment.yaml", "llmstack/templates/engine-service.yaml"):
        assert text[path].count("cost:") == 1, text[path]


def test_existing_service_account():
    """serviceAccount.create: false uses the named ServiceAccount and creates no RBAC."""
    objects = render({"routerSpec": {"serviceAccount": {"create": False, "name": "llm-router"}}})
    router = one(objects, "Deployment", "demo-llmstack-router")
    assert router["spec"]["template"]["spec"]["serviceAccountName"] == "llm-router"
    assert not of_kind(objects, "ServiceAccount") and not of_kind(objects, "Role")


def router_pod(objects):
    return one(objects, "Deployment", "demo-llmstack-router")["spec"]["template"]["spec"]


def secret_value(secret, key):
    return base64.b64decode(secret["data"][key]).decode()


def test_api_keys_off_by_default():
    objects = render({})
    pod = router_pod(objects)
    assert "--api-keys-file" not in pod["containers"][0]["args"]
    assert "volumes" not in pod and "volumeMounts" not in pod["containers"][0]
    assert of_kind(objects, "Secret") == []
    assert "API keys are on" not in notes({}) and "curl -s localhost:8080/v1/models\n" in notes({})


API_KEYS = [
    {"key": "sk-team-a", "tenant": "team-a", "priority": "high", "rpm": 600, "tpm": 1000000},
    {"key": "sk-team-a-2", "tenant": "team-a", "priority": "high", "rpm": 600, "tpm": 1000000},
    {"sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "tenant": "batch",
     "priority": "low"},
    {"key": "12345"},  # YAML would read it as a number: it must stay a string in the file
]


def test_api_keys_inline():
    """Inline keys: the chart's Secret <fullname>-api-keys holds the keys file, mounted as a directory (no
    subPath, so the kubelet updates the file in place) and passed as --api-keys-file."""
    values = {"servingEngineSpec": {"vllmApiKey": "sk-engine"}, "routerSpec": {"apiKeys": {"keys": API_KEYS}}}
    objects = render(values)
    secret = one(objects, "Secret", "demo-llmstack-api-keys")
    assert secret["type"] == "Opaque" and list(secret["data"]) == ["api-keys.yaml"]
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    assert yaml.safe_load(secret_value(secret, "api-keys.yaml")) == {"keys": API_KEYS}
    # The engines' key stays in the other Secret; the router gets it as before.
    assert list(one(objects, "Secret", "demo-llmstack-secrets")["data"]) == ["vllm_api_key"]
    pod = router_pod(objects)
    c = pod["containers"][0]
    assert flag(c["args"], "--api-keys-file") == "/etc/llmstack/keys/api-keys.yaml"
    assert c["volumeMounts"] == [{"name": "api-keys", "mountPath": "/etc/llmstack/keys", "readOnly": True}]
    assert pod["volumes"] == [{"name": "api-keys", "secret": {
        "secretName": "demo-llmstack-api-keys", "items": [{"key": "api-keys.yaml", "path": "api-keys.yaml"}]}}]
    assert c["env"] == [{"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "demo-llmstack-secrets", "key": "vllm_api_key"}}}]
    # A change of keys reaches the running routers through the volume: no checksum annotation
    # that would roll them.
    assert "annotations" not in one(objects, "Deployment", "demo-llmstack-router")["spec"]["template"]["metadata"]
    text = notes(values)
    assert "the keys file is api-keys.yaml in the Secret\n   demo-llmstack-api-keys" in text
    for path in ("/v1/models", "/engines", "/v1/chat/completions"):
        assert f'curl -s localhost:8080{path} -H "authorization: Bearer $API_KEY"' in text
    # No router, no keys Secret.
    assert of_kind(render({"routerSpec": {"enableRouter": False, "apiKeys": {"keys": API_KEYS}}}), "Secret") == []


def test_api_keys_existing_secret():
    """existingSecret: the chart creates no Secret and mounts that one's `secretKey`."""
    values = {"routerSpec": {"apiKeys": {"existingSecret": "llm-keys", "secretKey": "keys.txt"}}}
    objects = render(values)
    assert of_kind(objects, "Secret") == []
    pod = router_pod(objects)
    c = pod["containers"][0]
    assert flag(c["args"], "--api-keys-file") == "/etc/llmstack/keys/keys.txt"
    assert c["volumeMounts"] == [{"name": "api-keys", "mountPath": "/etc/llmstack/keys", "readOnly": True}]
    assert pod["volumes"] == [{"name": "api-keys", "secret": {
        "secretName": "llm-keys", "items": [{"key": "keys.txt", "path": "keys.txt"}]}}]
    assert "the keys file is keys.txt in the Secret\n   llm-keys)" in notes(values)
    for obj in objects:
        validate_offline(obj)


def kubelet_write(directory, files):
    """Writes `files` (name -> text) into a Secret volume the way the kubelet's AtomicWriter does: a
    new timestamped directory, the `..data` link switched to it with one rename, a `<name> ->
    ..data/<name>` link per file, the previous directory removed. What a directory mount shows
    in a pod, before and after an update of the Secret (a subPath mount would never change)."""
    directory.mkdir(exist_ok=True)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    new = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    new.mkdir()
    for name, text in files.items():
        (new / name).write_text(text)
    os.symlink(new.name, directory / "..data_tmp")
    os.rename(directory / "..data_tmp", data)
    for name in files:
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    if old:
        shutil.rmtree(directory / old)


def test_api_keys_secret_reaches_the_router_and_reloads(sim_factory, tmp_path):
    """The rendered Secrets as the kubelet mounts them, with llmstack-sim and llmstack-server: the
    engine requires the engines' key (vllmApiKey), the router the clients' keys (the file at
    --api-keys-file); a `helm upgrade` with other keys is seen by the running router."""
    def release(keys):
        return render({"servingEngineSpec": {"engine": "sim", "vllmApiKey": "sk-engine", "modelSpec": [model()]},
                       "routerSpec": {"apiKeys": {"keys": keys}}})

    def mounted(objects, directory):
        """The router pod's keys volume written into `directory`; the --api-keys-file path there."""
        pod = router_pod(objects)
        (mount,) = pod["containers"][0]["volumeMounts"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        secret = one(objects, "Secret", volume["secret"]["secretName"])
        kubelet_write(directory, {i["path"]: secret_value(secret, i["key"]) for i in volume["secret"]["items"]})
        path = flag(pod["containers"][0]["args"], "--api-keys-file")
        assert path.startswith(mount["mountPath"] + "/")
        return directory / os.path.relpath(path, mount["mountPath"])

    objects = release([{"key": "sk-a", "tenant": "a"}])
    engine = one(objects, "Deployment", "demo-llmstack-m-engine")["spec"]["template"]["spec"]["containers"][0]
    ref = next(e for e in engine["env"] if e["name"] == "VLLM_API_KEY")["valueFrom"]["secretKeyRef"]
    engine_key = secret_value(one(objects, "Secret", ref["name"]), ref["key"])
    assert engine_key == "sk-engine"
    # llmstack-sim with the engine's key (VLLM_API_KEY there; the flag here, so that the test
    # environment cannot leak in), like vLLM: 401 without it.
    sim = sim_factory("--profile", "instant", "--model", flag(engine["args"], "--model"), "--api-key", engine_key)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{sim.url}/v1", api_key="sk-a", max_retries=0, timeout=10).models.list()

    keys_file = mounted(objects, tmp_path / "keys")
    router = Router(tmp_path / "router.log", "--host", "127.0.0.1", "--port", "0", "--service-discovery", "static",
                    "--static-backends", sim.url, "--static-models", "org/model",
                    "--api-keys-file", str(keys_file), "--engine-api-key", engine_key)  # fmt: skip
    try:
        def ask(key):
            client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=key, max_retries=0, timeout=10)
            return client.chat.completions.create(model="org/model", messages=[{"role": "user", "content": "Hi"}],
                                                  max_tokens=2)

        assert ask("sk-a").usage.completion_tokens <= 2  # the router put the engine's key in
        for key in ("sk-b", engine_key):
            with pytest.raises(openai.AuthenticationError) as e:
                ask(key)
            assert e.value.code == "invalid_api_key"

        # helm upgrade with other keys: the kubelet swaps the file; the router reloads it.
        mounted(release([{"key": "sk-b", "tenant": "b"}]), tmp_path / "keys")

        def swapped():
            try:
                ask("sk-a")
                return False
            except openai.AuthenticationError:
                return ask("sk-b")

        wait_for("the router to reload the keys", swapped, 10, router.log)
        assert "API keys reloaded" in router.log()
    finally:
        router.stop()


def test_readme_documents_the_fixed_dashboard_uid():
    """Two releases in one Grafana collide on the dashboard's fixed uid: the README says so."""
    uids = {json.loads(p.read_text())["uid"] for p in CHART.glob("dashboards/*.json")}
    assert uids == {"llmstack-overview"}
    readme = (CHART / "README.md").read_text()
    assert "`llmstack-overview`" in readme and "`observability.grafanaDashboards.enabled: false`" in readme


@pytest.fixture(scope="module")
def router_help_flags():
    return help_flags(SERVER)


@pytest.fixture(scope="module")
def sim_help_flags():
    return help_flags(SIM)


@pytest.mark.parametrize("case", list(CASES))
def test_render_common_invariants(case, router_help_flags, sim_help_flags):
    """What holds for every values file: namespaces, labels, TCP on every port, the router's
    discovery flags and selector, flags the binaries know, and pods only in the Role."""
    values = CASES[case]
    objects = render(values)
    with helm.Chart.load(str(CHART)) as c:
        merged = c.merge_values(values)
    sim = merged["servingEngineSpec"]["engine"] == "sim"
    models = merged["servingEngineSpec"]["modelSpec"]

    for obj in objects:
        meta = obj["metadata"]
        assert meta.get("namespace") == NAMESPACE, (obj["kind"], meta)
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert len(meta["name"]) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", meta["name"]), meta["name"]
        for port in all_ports(obj):
            # Helm v4 applies server-side; 1.20's SSA rejects list entries without `protocol`.
            assert port.get("protocol") in ("TCP", "UDP"), (obj["kind"], meta["name"], port)
            assert port.get("protocol") == "TCP" or port.get("name") == "peers", port
            assert port.get("name"), port

    router = one(objects, "Deployment", f"{RELEASE}-llmstack-router")
    container = router["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert container["image"] == f"ghcr.io/llmstack/llmstack-server:{APP_VERSION}"
    assert flag(args, "--service-discovery") == "k8s"
    assert flag(args, "--k8s-namespace") == NAMESPACE
    assert flag(args, "--k8s-port") == "8000"
    assert flag(args, "--port") == "8000" and flag(args, "--host") == "0.0.0.0"
    assert flag(args, "--routing-logic") == merged["routerSpec"]["routingLogic"]
    assert {a for a in args if a.startswith("--")} <= router_help_flags, "router flags unknown to llmstack-server"
    kvaware = merged["routerSpec"]["routingLogic"] == "kvaware"
    kvs = merged["servingEngineSpec"]["kvEvents"]
    assert flag(args, "--kv-events-port") == (str(kvs["port"]) if kvaware else None)
    assert flag(args, "--kv-events-replay-port") == (str(kvs["replayPort"]) if kvaware else None)
    assert flag(args, "--kv-events-topic") == (kvs["topic"] if kvaware else None)
    assert ("--tokenizer" in args) == bool(kvaware and merged["routerSpec"]["tokenizers"])
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert router["spec"]["template"]["spec"]["serviceAccountName"] == f"{RELEASE}-llmstack-router"

    selector = flag(args, "--k8s-label-selector")
    engines = [d for d in of_kind(objects, "Deployment") if d is not router]
    assert len(engines) == len(models)
    by_model = {d["metadata"]["labels"]["model"]: d for d in engines}
    for spec in models:
        dep = by_model[spec["name"]]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "engine"
        assert labels["model"] == spec["name"]
        assert selector_matches(selector, labels), (selector, labels)
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        engine = dep["spec"]["template"]["spec"]["containers"][0]
        eargs = engine["args"]
        assert flag(eargs, "--port") == "8000" and flag(eargs, "--host") == "0.0.0.0"
        assert {"name": "PYTHONHASHSEED", "value": "0"} in engine["env"]
        assert engine["ports"][0] == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
        assert engine["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        assert engine["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
        if sim:
            assert engine["image"] == f"ghcr.io/llmstack/llmstack-sim:{APP_VERSION}"
            assert "command" not in engine
            assert flag(eargs, "--model") == spec["modelURL"]
            assert {a for a in eargs if a.startswith("--")} <= sim_help_flags, "flags unknown to llmstack-sim"
            assert not any("gpu" in r for r in json.dumps(engine["resources"]).split('"'))
        else:
            assert engine["image"] == f"{spec['repository']}:{spec['tag']}"
            assert engine["command"] == spec.get("command", ["vllm", "serve"])
            assert eargs[0] == spec["modelURL"]
            assert engine["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
            gpus = spec.get("requestGPU", 0)
            if gpus:
                assert engine["resources"]["requests"]["nvidia.com/gpu"] == str(gpus)
                assert engine["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
        kvs = merged["servingEngineSpec"]["kvEvents"]
        if spec.get("vllmConfig", {}).get("enablePrefixCaching") is False or not kvs["enabled"]:
            assert "--kv-events-config" not in eargs
            assert [p["name"] for p in engine["ports"]] == ["http"]
        else:
            kv = json.loads(flag(eargs, "--kv-events-config"))
            assert kv == {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": f"tcp://*:{kvs['port']}",
                          "replay_endpoint": f"tcp://*:{kvs['replayPort']}", "topic": kvs["topic"]}
            assert engine["ports"][1:] == [
                {"name": "kv-events", "containerPort": kvs["port"], "protocol": "TCP"},
                {"name": "kv-replay", "containerPort": kvs["replayPort"], "protocol": "TCP"}]
        service = one(objects, "Service", dep["metadata"]["name"])
        assert service["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]

    role = one(objects, "Role", f"{RELEASE}-llmstack-router")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = one(objects, "RoleBinding", f"{RELEASE}-llmstack-router")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-llmstack-router",
                                    "namespace": NAMESPACE}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": f"{RELEASE}-llmstack-router"}
    one(objects, "ServiceAccount", f"{RELEASE}-llmstack-router")
    # No prometheus-operator in Helm's offline capabilities: no ServiceMonitor.
    assert of_kind(objects, "ServiceMonitor") == []


def test_render_default():
    objects = render({})
    kinds = sorted(o["kind"] for o in objects)
    dashboards = sorted(CHART.glob("dashboards/*.json"))
    assert kinds == sorted(["ConfigMap"] * len(dashboards) + ["Deployment", "Role", "RoleBinding", "Service",
                                                              "ServiceAccount"])
    router = one(objects, "Deployment", "demo-llmstack-router")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--k8s-label-selector") == (
        "app.kubernetes.io/component=engine,app.kubernetes.io/instance=demo,app.kubernetes.io/name=llmstack"
    )
    assert flag(args, "--engine-stats-interval") == "1"
    assert flag(args, "--session-key") is None
    assert router["spec"]["replicas"] == 1
    assert router["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 40
    assert "servingEngineSpec.modelSpec is empty" in notes({})


def test_render_minimal():
    objects = render(CASES["minimal"])
    dep = one(objects, "Deployment", "demo-llmstack-opt125m-engine")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "vllm/vllm-openai:v0.33.0"
    assert c["command"] == ["vllm", "serve"]
    assert c["args"][:5] == ["facebook/opt-125m", "--host", "0.0.0.0", "--port", "8000"]
    assert c["resources"] == {"requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
                              "limits": {"nvidia.com/gpu": "1"}}
    assert c["startupProbe"]["failureThreshold"] == 120
    assert of_kind(objects, "PersistentVolumeClaim") == [] and of_kind(objects, "Secret") == []
    assert of_kind(objects, "PodDisruptionBudget") == [] and of_kind(objects, "HorizontalPodAutoscaler") == []
    text = notes(CASES["minimal"])
    assert "kubectl -n llm port-forward service/demo-llmstack-router 8080:80" in text
    assert '"model": "facebook/opt-125m"' in text and "localhost:8080/v1/chat/completions" in text


def test_render_multiple_models():
    objects = render(CASES["multiple-models"])
    names = sorted(d["metadata"]["name"] for d in of_kind(objects, "Deployment"))
    assert names == ["demo-llmstack-llama3-engine", "demo-llmstack-mistral-engine", "demo-llmstack-router"]
    assert sorted(p["metadata"]["name"] for p in of_kind(objects, "PersistentVolumeClaim")) == [
        "demo-llmstack-llama3-engine-storage", "demo-llmstack-mistral-engine-storage"]
    llama = one(objects, "Deployment", "demo-llmstack-llama3-engine")
    assert llama["spec"]["replicas"] == 2
    # Two replicas share the claim: ReadWriteMany, and rolling updates are fine.
    assert one(objects, "PersistentVolumeClaim", "demo-llmstack-llama3-engine-storage")["spec"]["accessModes"] == [
        "ReadWriteMany"]
    assert "strategy" not in llama["spec"]
    # One replica on a ReadWriteOnce claim: Recreate, so the new pod can mount it.
    assert one(objects, "PersistentVolumeClaim", "demo-llmstack-mistral-engine-storage")["spec"]["accessModes"] == [
        "ReadWriteOnce"]
    assert one(objects, "Deployment", "demo-llmstack-mistral-engine")["spec"]["strategy"] == {"type": "Recreate"}
    pod = llama["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert {"name": "HF_HOME", "value": "/data"} in c["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in c["env"]
    assert c["volumeMounts"] == [{"name": "storage", "mountPath": "/data"}]
    assert pod["volumes"] == [{"name": "storage", "persistentVolumeClaim": {
        "claimName": "demo-llmstack-llama3-engine-storage"}}]
    assert flag(c["args"], "--max-model-len") == "16384" and flag(c["args"], "--dtype") == "bfloat16"
    assert flag(c["args"], "--gpu-memory-utilization") == "0.9"
    mistral = one(objects, "Deployment", "demo-llmstack-mistral-engine")["spec"]["template"]["spec"]
    assert mistral["containers"][0]["args"][-2:] == ["--tokenizer-mode", "mistral"]
    assert of_kind(objects, "Secret") == []  # the token is a reference to an existing Secret
    router = one(objects, "Deployment", "demo-llmstack-router")["spec"]["template"]["spec"]["containers"][0]
    assert flag(router["args"], "--static-aliases") == "gpt-4o:meta-llama/Llama-3.1-8B-Instruct"
    assert flag(router["args"], "--routing-logic") == "leastloaded"


def test_render_simulator():
    objects = render(CASES["simulator"])
    llama = one(objects, "Deployment", "demo-llmstack-llama3-engine")
    pod = llama["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"] == [
        "--model", "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0", "--port", "8000",
        "--max-model-len", "8192", "--max-num-seqs", "128",
        "--kv-events-config",
        '{"enable_kv_cache_events":true,"endpoint":"tcp://*:5557","publisher":"zmq",'
        '"replay_endpoint":"tcp://*:5558","topic":"kv-events"}',
        "--profile", "llama3-8b-h100", "--speedup", "1",
    ]  # fmt: skip
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
    assert "startupProbe" not in c and "runtimeClassName" not in pod
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"},
                          {"name": "kv-events", "containerPort": 5557, "protocol": "TCP"},
                          {"name": "kv-replay", "containerPort": 5558, "protocol": "TCP"}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "Engines (llmstack-sim" in notes(CASES["simulator"])


def test_render_session_routing():
    objects = render(CASES["session-routing"])
    router = one(objects, "Deployment", "demo-llmstack-router")
    args = router["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--routing-logic") == "session" and flag(args, "--session-key") == "x-user-id"
    assert router["spec"]["replicas"] == 2
    pdb = one(objects, "PodDisruptionBudget", "demo-llmstack-router")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"] == {"minAvailable": 1, "unhealthyPodEvictionPolicy": "AlwaysAllow", "selector": {"matchLabels": {
        "app.kubernetes.io/name": "llmstack", "app.kubernetes.io/instance": "demo",
        "app.kubernetes.io/component": "router"}}}
    assert router["spec"]["template"]["metadata"]["labels"].items() >= pdb["spec"]["selector"]["matchLabels"].items()


def test_render_prefix_routing():
    objects = render(CASES["prefix-routing"])
    args = one(objects, "Deployment", "demo-llmstack-router")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(args, "--routing-logic") == "prefixaware"
    assert flag(args, "--prefix-min-match-length") == "256"
    engine = one(objects, "Deployment", "demo-llmstack-llama3-engine")["spec"]["template"]["spec"]["containers"][0]
    assert "--enable-prefix-caching" in engine["args"]
    assert flag(engine["args"], "--max-num-seqs") == "256"


def test_render_router_replicas_share_load():
    """Several router replicas with a policy that reads load share it (--peers) through a
    headless Service of the router Pods, over UDP; one replica, a policy that reads no load,
    or shareLoad off: neither the flags nor the Service."""
    for values in ({"replicaCount": 3, "routingLogic": "prefixaware"},
                   {"routingLogic": "kvaware", "autoscaling": {"enabled": True}, "peerPort": 7100}):
        objects = render({"routerSpec": values})
        c = router_container(objects)
        port = values.get("peerPort", 7072)
        assert flag(c["args"], "--peers") == f"demo-llmstack-router-peers.llm.svc:{port}"
        assert flag(c["args"], "--peer-port") == str(port)
        assert {"name": "peers", "containerPort": port, "protocol": "UDP"} in c["ports"]
        svc = one(objects, "Service", "demo-llmstack-router-peers")
        assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
        assert svc["spec"]["ports"] == [{"name": "peers", "port": port, "targetPort": "peers", "protocol": "UDP"}]
        router = one(objects, "Deployment", "demo-llmstack-router")
        assert router["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
    for values in ({"routingLogic": "prefixaware"}, {"replicaCount": 3},
                   {"replicaCount": 3, "routingLogic": "random"},
                   {"replicaCount": 3, "routingLogic": "kvaware", "shareLoad": False}):
        objects = render({"routerSpec": values})
        assert flag(router_container(objects)["args"], "--peers") is None, values
        assert not [o for o in objects if o["metadata"]["name"] == "demo-llmstack-router-peers"], values


def router_container(objects):
    return one(objects, "Deployment", "demo-llmstack-router")["spec"]["template"]["spec"]["containers"][0]


def test_render_kvaware():
    """kvaware: the engines' KV-event ports and topic as router flags, a --tokenizer per entry, the
    tokenizer volume and the Hugging Face cache mounted read-only (HF_HOME), and the notes."""
    objects = render(KVAWARE)
    c = router_container(objects)
    args = c["args"]
    assert flag(args, "--routing-logic") == "kvaware"
    assert (flag(args, "--kv-events-port"), flag(args, "--kv-events-replay-port"),
            flag(args, "--kv-events-topic")) == ("5600", "5601", "kv")  # fmt: skip
    assert [args[i + 1] for i, a in enumerate(args) if a == "--tokenizer"] == [f"{LLAMA}=/tokenizers/llama3"]
    assert c["env"] == [{"name": "HF_HOME", "value": "/hf-cache"}]
    assert c["volumeMounts"] == [{"name": "tokenizers", "mountPath": "/tokenizers", "readOnly": True},
                                 {"name": "hf-cache", "mountPath": "/hf-cache", "readOnly": True}]
    assert router_pod(objects)["volumes"] == [
        {"name": "tokenizers", "persistentVolumeClaim": {"claimName": "tokenizers", "readOnly": True}},
        {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache", "readOnly": True}}]
    for name in ("llama3", "qwen"):
        engine = one(objects, "Deployment", f"demo-llmstack-{name}-engine")["spec"]["template"]["spec"]["containers"][0]
        assert json.loads(flag(engine["args"], "--kv-events-config")) == {
            "enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:5600",
            "replay_endpoint": "tcp://*:5601", "topic": "kv"}
        assert [(p["name"], p["containerPort"]) for p in engine["ports"]] == [
            ("http", 8000), ("kv-events", 5600), ("kv-replay", 5601)]
    text = notes(KVAWARE)
    assert "Routing: kvaware" in text and 'tcp://<pod IP>:5600 (replay port 5601, topic "kv")' in text
    assert f"No tokenizer in routerSpec.tokenizers for: {QWEN}.\n" in text
    assert "in the Hugging Face cache\n   at /hf-cache (routerSpec.hfCache)" in text
    # With one tokenizer for every model, nothing to say.
    every = copy.deepcopy(KVAWARE)
    every["routerSpec"]["tokenizers"].append({"path": "/tokenizers/default"})
    assert "No tokenizer" not in notes(every) and "Routing: kvaware" in notes(every)


def test_render_kvaware_defaults_and_without_tokenizers():
    """kvaware with the chart's kvEvents defaults and nothing else: ports 5557/5558, topic
    kv-events, no tokenizer, no volume; the notes say the router will fall back. No replay port
    and an empty topic leave their flags out; other policies get none of the kvaware flags."""
    values = {"servingEngineSpec": {"modelSpec": [model()]}, "routerSpec": {"routingLogic": "kvaware"}}
    c = router_container(render(values))
    assert c["args"][-6:] == ["--kv-events-port", "5557", "--kv-events-replay-port", "5558",
                              "--kv-events-topic", "kv-events"]
    assert "--tokenizer" not in c["args"] and "env" not in c and "volumeMounts" not in c
    text = notes(values)
    assert "tcp://<pod IP>:5557 (replay port 5558, topic \"kv-events\")" in text
    assert ("No tokenizer is configured (routerSpec.tokenizers, routerSpec.hfCache): the router\n"
            "   looks for each model's tokenizer in the Hugging Face cache of its container") in text
    assert "routes a model without one as prefixaware" in text
    # The Hugging Face cache only.
    text = notes({**values, "routerSpec": {"routingLogic": "kvaware", "hfCache": {"emptyDir": {}}}})
    assert "No routerSpec.tokenizers: the router looks for each model's tokenizer by model id\n" in text

    bare = {"servingEngineSpec": {"kvEvents": {"replayPort": 0, "topic": ""}, "modelSpec": [model()]},
            "routerSpec": {"routingLogic": "kvaware"}}
    objects = render(bare)
    assert router_container(objects)["args"][-2:] == ["--kv-events-port", "5557"]
    engine = one(objects, "Deployment", "demo-llmstack-m-engine")["spec"]["template"]["spec"]["containers"][0]
    assert json.loads(flag(engine["args"], "--kv-events-config")) == {
        "enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:5557", "topic": ""}
    assert [p["name"] for p in engine["ports"]] == ["http", "kv-events"]
    assert "tcp://<pod IP>:5557 (no replay port, every topic)" in notes(bare)

    # Tokenizers and volumes are kvaware's: another policy gets none of them.
    other = copy.deepcopy(KVAWARE)
    other["routerSpec"]["routingLogic"] = "prefixaware"
    c = router_container(render(other))
    assert not [a for a in c["args"] if a.startswith(("--kv-events", "--tokenizer"))]
    assert "env" not in c and "volumeMounts" not in c
    assert "kvaware" not in notes(other)
    # kvEvents off or a model without prefix caching is fine for other policies (TEMPLATE_ERRORS: not kvaware).
    render({"servingEngineSpec": {"kvEvents": {"enabled": False}, "modelSpec": [model()]}})
    # A router of its own in front of another release's engines: the values describe those engines.
    objects = render({"servingEngineSpec": {"enableEngine": False, "kvEvents": {"port": 7000}},
                      "routerSpec": {"routingLogic": "kvaware"}})
    assert flag(router_container(objects)["args"], "--kv-events-port") == "7000"
    # Together with API keys: both volumes.
    keys = render({**values, "routerSpec": {"routingLogic": "kvaware", "apiKeys": {"existingSecret": "k"},
                                            "tokenizerVolume": {"emptyDir": {}}}})
    assert [m["name"] for m in router_container(keys)["volumeMounts"]] == ["api-keys", "tokenizers"]
    assert [v["name"] for v in router_pod(keys)["volumes"]] == ["api-keys", "tokenizers"]


def test_render_full():
    objects = render(FULL)
    secret = one(objects, "Secret", "demo-llmstack-secrets")
    assert sorted(secret["data"]) == ["hf_token_llama3", "vllm_api_key"]
    llama = one(objects, "Deployment", "demo-llmstack-llama3-engine")
    assert "replicas" not in llama["spec"]  # KEDA owns the replica count
    pod = llama["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"][0]["values"] == ["h100"]
    assert llama["spec"]["template"]["metadata"]["labels"]["tier"] == "gpu"
    assert llama["spec"]["template"]["metadata"]["annotations"] == {"example.com/owner": "ml"}
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "32Gi"}} in pod["volumes"]
    assert flag(c["args"], "--tensor-parallel-size") == "2"
    assert json.loads(flag(c["args"], "--kv-transfer-config")) == {"kv_connector": "LMCacheConnectorV1",
                                                                   "kv_role": "kv_both"}
    env = {e["name"]: e for e in c["env"]}
    assert env["LMCACHE_MAX_LOCAL_CPU_SIZE"]["value"] == "40" and env["LMCACHE_LOCAL_CPU"]["value"] == "True"
    # Disk offload: a size and the path LMCache writes to, on a volume of the pod.
    assert env["LMCACHE_MAX_LOCAL_DISK_SIZE"]["value"] == "100"
    assert env["LMCACHE_LOCAL_DISK"]["value"] == "file:///lmcache/"
    assert {"name": "lmcache-disk", "mountPath": "/lmcache"} in c["volumeMounts"]
    assert {"name": "lmcache-disk", "emptyDir": {}} in pod["volumes"]
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "demo-llmstack-secrets", "key": "hf_token_llama3"}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "demo-llmstack-secrets", "key": "vllm_api_key"}
    assert env["VLLM_LOGGING_LEVEL"]["value"] == "INFO"
    assert c["resources"] == {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"},
                              "limits": {"memory": "96Gi", "nvidia.com/gpu": "2"}}
    small = one(objects, "Deployment", "demo-llmstack-small-engine")["spec"]["template"]["spec"]["containers"][0]
    assert "--no-enable-prefix-caching" in small["args"]
    assert one(objects, "PersistentVolumeClaim", "demo-llmstack-llama3-engine-storage")["spec"] == {
        "accessModes": ["ReadWriteMany"], "storageClassName": "fast", "resources": {"requests": {"storage": "200Gi"}}}
    assert "strategy" not in llama["spec"]
    # servingEngineSpec.labels are on the engine Services too, not only on the pods.
    service = one(objects, "Service", "demo-llmstack-llama3-engine")
    assert service["metadata"]["labels"]["tier"] == "gpu" and service["metadata"]["labels"]["model"] == "llama3"

    so = one(objects, "ScaledObject", "demo-llmstack-llama3-engine")
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": "demo-llmstack-llama3-engine"}
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 6)
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"] == {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
        "query": 'sum(vllm:num_requests_waiting{namespace="llm",service="demo-llmstack-llama3-engine"})',
        "threshold": "4",
    }
    assert len(of_kind(objects, "ScaledObject")) == 1

    router = one(objects, "Deployment", "demo-llmstack-router")
    assert "replicas" not in router["spec"]  # the HPA owns it
    rc = router["spec"]["template"]["spec"]["containers"][0]
    assert rc["env"][0] == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "demo-llmstack-secrets", "key": "vllm_api_key"}}}
    assert rc["args"][-2:] == ["--health-check-failure-threshold", "3"]
    hpa = one(objects, "HorizontalPodAutoscaler", "demo-llmstack-router")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
        {"type": "Pods", "pods": {"metric": {"name": "llmstack_in_flight_requests"},
                                  "target": {"type": "AverageValue", "averageValue": "64"}}},
    ]
    # The HPA's minimum is 2: the PDB follows.
    assert one(objects, "PodDisruptionBudget", "demo-llmstack-router")["spec"]["minAvailable"] == 1
    assert all(o["metadata"]["labels"]["team"] == "ml" for o in objects)


def test_the_in_flight_metric_exists():
    """The HPA's Pods metric is a series the router really exports."""
    names = (ROOT / "llmstack-metrics" / "src" / "names.rs").read_text()
    assert 'pub const IN_FLIGHT: &str = "llmstack_in_flight_requests";' in names


def copy_chart(tmp_path, dashboards):
    """The chart with its dashboards/ replaced by `dashboards` (name -> text; None: no dir)."""
    dest = tmp_path / "llmstack"
    shutil.copytree(CHART, dest, ignore=shutil.ignore_patterns("dashboards"))
    if dashboards is not None:
        (dest / "dashboards").mkdir()
        for name, text in dashboards.items():
            (dest / "dashboards" / name).write_text(text)
    return dest


def test_dashboards_become_configmaps(tmp_path):
    # The chart as shipped: one ConfigMap per dashboards/*.json.
    shipped = sorted(CHART.glob("dashboards/*.json"))
    maps = of_kind(render({}), "ConfigMap")
    assert len(maps) == len(shipped)
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        (key, text), = cm["data"].items()
        assert text == (CHART / "dashboards" / key).read_text().rstrip("\n")
        json.loads(text)

    # Any file name; other files ignored; the toggle and extra labels/annotations.
    chart = copy_chart(tmp_path / "a", {"Router Overview.json": '{"title": "a"}\n', "engines.json": '{"title": "b"}',
                                        "README.md": "not a dashboard"})
    maps = of_kind(render({"observability": {"grafanaDashboards": {"annotations": {"grafana_folder": "LLM"}}}},
                          chart=chart), "ConfigMap")
    assert sorted(m["metadata"]["name"] for m in maps) == ["demo-llmstack-dashboard-engines",
                                                          "demo-llmstack-dashboard-router-overview"]
    by_name = {m["metadata"]["name"]: m for m in maps}
    assert by_name["demo-llmstack-dashboard-router-overview"]["data"] == {"Router-Overview.json": '{"title": "a"}'}
    assert by_name["demo-llmstack-dashboard-engines"]["data"] == {"engines.json": '{"title": "b"}'}
    assert all(m["metadata"]["annotations"] == {"grafana_folder": "LLM"} for m in maps)
    assert of_kind(render({"observability": {"grafanaDashboards": {"enabled": False}}}, chart=chart), "ConfigMap") == []

    # No dashboards directory, or an empty one: nothing.
    assert of_kind(render({}, chart=copy_chart(tmp_path / "b", None)), "ConfigMap") == []
    assert of_kind(render({}, chart=copy_chart(tmp_path / "c", {})), "ConfigMap") == []


# --- 3. Kubernetes schemas ------------------------------------------------------------------------


def crd(group, version, kind, plural, spec_schema):
    # *.k8s.io groups are protected: the apiserver wants the approval annotation (Gateway API's
    # own CRDs carry it).
    approval = {"api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/891"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", **({"annotations": approval} if group.endswith(".k8s.io") else {})},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
            "versions": [{
                "name": version, "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                    "spec": spec_schema}}},
            }],
        },
    }  # fmt: skip


STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
STRINGS = {"type": "array", "items": STR}
LABEL_SELECTOR = {"type": "object", "properties": {
    "matchLabels": {"type": "object", "additionalProperties": STR},
    "matchExpressions": {"type": "array", "items": {"type": "object", "required": ["key", "operator"], "properties": {
        "key": STR, "operator": STR, "values": STRINGS}}}}}
DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
# Trimmed from prometheus-operator's ServiceMonitor CRD (monitoring.coreos.com/v1) and KEDA's
# ScaledObject CRD (keda.sh/v1alpha1): the fields the chart sets, with their types.
CRDS = [
    crd("monitoring.coreos.com", "v1", "ServiceMonitor", "servicemonitors", {
        "type": "object", "required": ["selector"], "properties": {
            "selector": LABEL_SELECTOR,
            "namespaceSelector": {"type": "object", "properties": {"any": BOOL, "matchNames": STRINGS}},
            "podTargetLabels": STRINGS, "targetLabels": STRINGS, "jobLabel": STR,
            "endpoints": {"type": "array", "items": {"type": "object", "properties": {
                "port": STR, "path": STR, "scheme": {"type": "string", "enum": ["http", "https"]},
                "interval": DURATION, "scrapeTimeout": DURATION, "honorLabels": BOOL,
                "relabelings": {"type": "array", "items": {"type": "object", "properties": {
                    "sourceLabels": STRINGS, "separator": STR, "targetLabel": STR, "regex": STR,
                    "replacement": STR, "modulus": INT,
                    "action": {"type": "string", "enum": [
                        "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap",
                        "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase",
                        "uppercase", "Uppercase", "keepequal", "KeepEqual", "dropequal", "DropEqual"]}}}},
                "metricRelabelings": {"type": "array", "items": {"type": "object", "properties": {
                    "sourceLabels": STRINGS, "separator": STR, "targetLabel": STR, "regex": STR,
                    "replacement": STR, "action": STR}}}}}}}}),
    crd("keda.sh", "v1alpha1", "ScaledObject", "scaledobjects", {
        "type": "object", "required": ["scaleTargetRef", "triggers"], "properties": {
            "scaleTargetRef": {"type": "object", "required": ["name"], "properties": {
                "apiVersion": STR, "kind": STR, "name": STR, "envSourceContainerName": STR}},
            "minReplicaCount": INT, "maxReplicaCount": INT, "idleReplicaCount": INT,
            "pollingInterval": INT, "cooldownPeriod": INT, "initialCooldownPeriod": INT,
            "fallback": {"type": "object", "required": ["failureThreshold", "replicas"], "properties": {
                "failureThreshold": INT, "replicas": INT, "behavior": STR}},
            "advanced": {"type": "object", "properties": {
                "restoreToOriginalReplicaCount": BOOL,
                "horizontalPodAutoscalerConfig": {"type": "object", "properties": {
                    "name": STR, "behavior": {"type": "object"}}},
                "scalingModifiers": {"type": "object", "properties": {
                    "target": STR, "activationTarget": STR, "metricType": STR, "formula": STR}}}},
            "triggers": {"type": "array", "items": {"type": "object", "required": ["type", "metadata"], "properties": {
                "type": STR, "name": STR, "metricType": STR, "useCachedMetrics": BOOL,
                "metadata": {"type": "object", "additionalProperties": STR}}}}}}),
    # Gateway API's HTTPRoute (production-stack's routerSpec.route), trimmed the same way.
    crd("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes", {
        "type": "object", "properties": {
            "parentRefs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "group": STR, "kind": STR, "namespace": STR, "name": STR, "sectionName": STR, "port": INT}}},
            "hostnames": STRINGS,
            "rules": {"type": "array", "items": {"type": "object", "properties": {
                "matches": {"type": "array", "items": {"type": "object", "properties": {
                    "path": {"type": "object", "properties": {
                        "type": {"type": "string", "enum": ["Exact", "PathPrefix", "RegularExpression"]},
                        "value": STR}},
                    "headers": {"type": "array", "items": {"type": "object"}},
                    "queryParams": {"type": "array", "items": {"type": "object"}}, "method": STR}}},
                "filters": {"type": "array", "items": {"type": "object", "required": ["type"], "properties": {
                    "type": STR, "requestHeaderModifier": {"type": "object"},
                    "responseHeaderModifier": {"type": "object"}, "urlRewrite": {"type": "object"},
                    "requestRedirect": {"type": "object", "properties": {
                        "scheme": STR, "hostname": STR, "port": INT, "statusCode": INT,
                        "path": {"type": "object"}}}}}},
                "backendRefs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                    "group": STR, "kind": STR, "namespace": STR, "name": STR, "port": INT, "weight": INT}}}}}}}}),
]  # fmt: skip


def closed(schema):
    """The CRD schema with unknown fields rejected (the apiserver prunes them instead)."""
    schema = copy.deepcopy(schema)
    if schema.get("type") == "object" and "properties" in schema:
        schema["additionalProperties"] = False
        schema["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
    if "items" in schema:
        schema["items"] = closed(schema["items"])
    return schema


CRD_SCHEMAS = {
    (f"{c['spec']['group']}/{c['spec']['versions'][0]['name']}", c["spec"]["names"]["kind"]):
        closed(c["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    for c in CRDS
}  # fmt: skip


def validate_offline(obj, version=K8S_VERSION):
    """Strict Kubernetes schema, or the trimmed CRD schema for a CRD kind."""
    crd_schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if crd_schema is not None:
        jsonschema.Draft7Validator(crd_schema).validate(obj)
        return "crd"
    kubernetes_validate.validate(obj, version, strict=True)
    return "k8s"


@pytest.mark.parametrize("case", list(CASES))
def test_kubernetes_1_33_schemas(case):
    results = {}
    for obj in render(CASES[case]):
        try:
            results[(obj["kind"], obj["metadata"]["name"])] = validate_offline(obj)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(e.message)
    assert results
    if case == "full":
        assert results[("ScaledObject", "demo-llmstack-llama3-engine")] == "crd"
        assert results[("HorizontalPodAutoscaler", "demo-llmstack-router")] == "k8s"


def test_offline_checks_catch_mistakes():
    """The validators used above do reject what they should."""
    dep = one(render(CASES["simulator"]), "Deployment", "demo-llmstack-router")
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_offline(bad)
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_offline(bad)
    so = one(render(FULL), "ScaledObject", "demo-llmstack-llama3-engine")
    so["spec"]["triggers"][0]["metadata"]["threshold"] = 4
    with pytest.raises(jsonschema.ValidationError):
        validate_offline(so)


# --- 3b. the real kube-apiserver 1.20: capabilities and server-side dry-run -------------------------


class Api:
    """Paths of API resources, from the apiserver's discovery documents."""

    def __init__(self, kapi):
        self.kapi = kapi
        self.cache = {}

    def resource(self, api_version, kind):
        if api_version not in self.cache:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            status, body = self.kapi.request("GET", path)
            assert status == 200, (api_version, status, body)
            self.cache[api_version] = (path, {r["kind"]: r for r in body["resources"] if "/" not in r["name"]})
        path, resources = self.cache[api_version]
        r = resources[kind]
        return path, r["name"], r["namespaced"]

    def collection(self, obj, namespace):
        path, plural, namespaced = self.resource(obj["apiVersion"], obj["kind"])
        return f"{path}/namespaces/{namespace}/{plural}" if namespaced else f"{path}/{plural}"


def create_namespace(kapi, name):
    status, body = kapi.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": name}})
    assert status in (201, 409), body


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    """A second apiserver with the ServiceMonitor and ScaledObject CRDs registered (established);
    the install test uses the plain `kube_apiserver`, where the chart renders no ServiceMonitor
    (whose creation would crash this build, see above)."""
    server = KubeApiServer(tmp_path_factory.mktemp("kapi-crds"))
    try:
        register_crds(server)
        yield server
    finally:
        server.stop()


def register_crds(kube_apiserver):
    for c in CRDS:
        status, body = kube_apiserver.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", c)
        assert status == 201, body
    deadline = time.monotonic() + 20
    for c in CRDS:
        while True:
            _, body = kube_apiserver.request(
                "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{c['metadata']['name']}")
            conditions = {x["type"]: x["status"] for x in body.get("status", {}).get("conditions", [])}
            if conditions.get("Established") == "True":
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.05)


def cluster_render(kapi, values, namespace, name=RELEASE):
    """`helm install --dry-run=server`: rendered with the cluster's capabilities (1.20's API
    versions, the CRDs registered), nothing stored."""
    with helm.Config(namespace=namespace, kubeconfig_path=str(kapi.kubeconfig_path)) as cfg:
        release = cfg.install(str(CHART), name, values, namespace=namespace, dry_run="server")
    return [o for o in yaml.safe_load_all(release["manifest"]) if o]


def dropped_fields(sent, returned, path=""):
    """Paths present in `sent` but not in what the apiserver kept: fields it does not know (1.20
    has no strict field validation; it drops them, and a CRD prunes them)."""
    missing = []
    if isinstance(sent, dict):
        if not isinstance(returned, dict):
            return [path or "."]
        for key, value in sent.items():
            if value is None:
                continue
            if key not in returned:
                missing.append(f"{path}.{key}")
            else:
                missing += dropped_fields(value, returned[key], f"{path}.{key}")
    elif isinstance(sent, list):
        if not isinstance(returned, list) or len(returned) != len(sent):
            return [path]
        for i, item in enumerate(sent):
            # Some lists come back reordered (1.20 stores HPAs as autoscaling/v1 and appends the
            # CPU target after the others): any element that kept everything will do.
            tries = [dropped_fields(item, other, f"{path}[{i}]") for other in [returned[i], *returned]]
            missing += min(tries, key=len)
    return missing


def dry_run(kapi, api, obj, namespace):
    status, body = kapi.request("POST", api.collection(obj, namespace) + "?dryRun=All", obj)
    return status, body


@pytest.mark.parametrize("case", list(CASES))
def test_server_dry_run_on_kube_1_20(kube, case):
    namespace = f"dry-{case}"
    create_namespace(kube, namespace)
    api = Api(kube)
    objects = cluster_render(kube, CASES[case], namespace)
    kinds = {o["kind"] for o in objects}
    posted = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            validate_offline(obj)  # not POSTed: see the module docstring
            continue
        status, body = dry_run(kube, api, obj, namespace)
        assert status == 201, f"{obj['kind']}/{obj['metadata']['name']}: {status} {body}"
        assert body["metadata"]["name"] == obj["metadata"]["name"]
        assert dropped_fields(obj, body) == [], f"{obj['kind']}/{obj['metadata']['name']}"
        posted += 1
    assert posted >= 5
    # Dry run: nothing was created.
    status, body = kube.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments")
    assert status == 200 and body["items"] == []
    # prometheus-operator's API is served here, so the ServiceMonitors are rendered.
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    engines = CASES[case].get("servingEngineSpec", {}).get("modelSpec")
    assert sorted(m["metadata"]["name"] for m in monitors) == sorted(
        [f"{RELEASE}-llmstack-router"] + ([f"{RELEASE}-llmstack-engines"] if engines else []))
    for m in monitors:
        endpoint = {"port": "http", "path": "/metrics", "interval": "15s"}
        if m["metadata"]["name"].endswith("-engines"):
            # Only ready engines are targets: a pod loading its weights is not `up == 0`.
            endpoint["relabelings"] = [
                {"sourceLabels": ["__meta_kubernetes_endpoint_ready"], "regex": "true", "action": "keep"}]
        assert m["spec"]["endpoints"] == [endpoint]
    if case == "full":
        assert {"ScaledObject", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret"} <= kinds


def test_api_versions_follow_capabilities(kube):
    """1.20 serves neither policy/v1 (1.21) nor autoscaling/v2 (1.23): the chart falls back; Helm's
    offline capabilities (a current Kubernetes) get the GA versions."""
    offline = render(FULL)
    assert one(offline, "PodDisruptionBudget", "demo-llmstack-router")["apiVersion"] == "policy/v1"
    assert one(offline, "HorizontalPodAutoscaler", "demo-llmstack-router")["apiVersion"] == "autoscaling/v2"
    create_namespace(kube, "caps")
    on_1_20 = cluster_render(kube, FULL, "caps")
    pdb = one(on_1_20, "PodDisruptionBudget", "demo-llmstack-router")
    hpa = one(on_1_20, "HorizontalPodAutoscaler", "demo-llmstack-router")
    assert pdb["apiVersion"] == "policy/v1beta1"
    assert hpa["apiVersion"] == "autoscaling/v2beta2"
    # Same content under either version, but for unhealthyPodEvictionPolicy (policy/v1 on
    # Kubernetes 1.26+: unready routers, waiting for an engine, must not block node drains).
    offline_pdb = dict(one(offline, "PodDisruptionBudget", "demo-llmstack-router")["spec"])
    assert offline_pdb.pop("unhealthyPodEvictionPolicy") == "AlwaysAllow"
    assert pdb["spec"] == offline_pdb
    assert hpa["spec"] == one(offline, "HorizontalPodAutoscaler", "demo-llmstack-router")["spec"]


def test_server_dry_run_catches_mistakes(kube):
    """The dry-run check above fails on a bad object: a wrong type (rejected) and an unknown
    field (dropped by 1.20, found missing in the answer); a CR's unknown field, offline."""
    create_namespace(kube, "dry-bad")
    api = Api(kube)
    objects = cluster_render(kube, FULL, "dry-bad")
    dep = copy.deepcopy(one(objects, "Deployment", "demo-llmstack-router"))
    dep["spec"]["template"]["spec"]["containers"][0]["portz"] = [1]
    status, body = dry_run(kube, api, dep, "dry-bad")
    assert status == 201 and dropped_fields(dep, body) == [".spec.template.spec.containers[0].portz"]
    dep["spec"]["replicas"] = "two"
    status, _ = dry_run(kube, api, dep, "dry-bad")
    assert status in (400, 422)
    sm = copy.deepcopy(one(objects, "ServiceMonitor", "demo-llmstack-router"))
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate_offline(sm)


# --- 4. install the simulator example and run it ----------------------------------------------------


class Processes:
    """Processes this test starts; all stopped (by handle) at the end."""

    def __init__(self, log_dir):
        self.log_dir = pathlib.Path(log_dir)
        self.procs = []

    def start(self, name, argv, stdout=None, env=None):
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLMSTACK_") and k != "VLLM_API_KEY"},
               **(env or {})}
        env["NO_COLOR"] = "1"
        log = open(self.log_dir / f"{name}.log", "wb")
        proc = subprocess.Popen(argv, stdout=stdout or log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                text=stdout is not None)
        log.close()
        self.procs.append(proc)
        return proc

    def log(self, name):
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def stop(self):
        for proc in reversed(self.procs):
            stop_process(proc)


@pytest.fixture
def processes(tmp_path):
    p = Processes(tmp_path)
    yield p
    p.stop()


def replace_flag(args, name, value):
    args = list(args)
    i = args.index(name)
    args[i + 1] = value
    return args


def http_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def wait_for(what, check, timeout, on_fail=lambda: ""):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (OSError, ValueError, urllib.error.URLError) as e:
            last = e
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what} (last error: {last})\n{on_fail()}")


def service_account_kubeconfig(kapi, namespace, service_account, path):
    """A kubeconfig with a TokenRequest token of the chart's ServiceAccount: the router gets
    exactly what the chart's Role grants."""
    status, body = kapi.request(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
         "spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600}})  # fmt: skip
    assert status == 201, body
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": kapi.url, "certificate-authority": str(kapi.ca_path)}}],
        "users": [{"name": "sa", "user": {"token": body["status"]["token"]}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": namespace}}],
    }))  # fmt: skip
    return path


def allowed(kapi, namespace, service_account, verb, resource, group="", ns=None):
    status, body = kapi.request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": f"system:serviceaccount:{namespace}:{service_account}",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                 "resourceAttributes": {"namespace": ns or namespace, "verb": verb, "group": group,
                                        "resource": resource}}})  # fmt: skip
    assert status == 201, body
    return body["status"].get("allowed", False)


def test_install_simulator_example_and_route(kube_apiserver, processes, tmp_path):
    kapi, namespace, release = kube_apiserver, "sim-e2e", "llmstack"
    started = time.monotonic()
    with helm.Config(namespace=namespace, kubeconfig_path=str(kapi.kubeconfig_path)) as cfg:
        installed = cfg.install(str(CHART), release, CASES["simulator"], namespace=namespace,
                                create_namespace=True, timeout=60)
        assert installed["status"] == "deployed", installed
        assert [r["name"] for r in cfg.list()] == [release]
        try:
            run_installed_release(kapi, namespace, release, processes, tmp_path)
        finally:
            cfg.uninstall(release, timeout=60)
        assert cfg.list() == []
    selector = f"labelSelector=app.kubernetes.io/instance%3D{release}"
    for plural, path in [("deployments", "/apis/apps/v1"), ("services", "/api/v1"),
                         ("roles", "/apis/rbac.authorization.k8s.io/v1")]:
        status, body = kapi.request("GET", f"{path}/namespaces/{namespace}/{plural}?{selector}")
        assert status == 200 and body["items"] == [], (plural, body)
    print(f"install, run and uninstall: {time.monotonic() - started:.1f} s")


def start_engine_pods(kapi, namespace, deployments, router_name, processes):
    """The engine pods of `deployments` (all but the router's), each a llmstack-sim process and a
    Pod object marked Running and Ready at its loopback IP: {pod name: (uid, URL, model)}, and
    the --kv-events-config each pod was rendered with."""
    # Play the ReplicaSet controller, the scheduler and the kubelet for every engine replica:
    # start llmstack-sim with the container's rendered args, adjusted only where the pod's
    # network differs from this machine's: --host (the pod IP, a loopback address), --port
    # (0: a free port, which the pod announces with the llmstack.io/port annotation, as the
    # router reads it before the container port) and the KV-events ports (0 for the same reason).
    pods, kv_configs = {}, {}
    ip = 2
    for name, dep in sorted(deployments.items()):
        if name == router_name:
            continue
        template = dep["spec"]["template"]
        container = template["spec"]["containers"][0]
        assert container["image"] == f"ghcr.io/llmstack/llmstack-sim:{APP_VERSION}"
        for replica in range(dep["spec"]["replicas"]):
            pod_ip = f"127.0.0.{ip}"
            ip += 1
            pod_name = f"{name}-{replica}"
            args = replace_flag(container["args"], "--host", pod_ip)
            args = replace_flag(args, "--port", "0")
            kv = json.loads(flag(args, "--kv-events-config"))
            kv_configs[pod_name] = kv
            args = replace_flag(args, "--kv-events-config", json.dumps({**kv, "endpoint": "tcp://*:0", **(
                {"replay_endpoint": "tcp://*:0"} if kv.get("replay_endpoint") else {})}))
            sim = processes.start(pod_name, [SIM, *args], stdout=subprocess.PIPE)
            ready, _, _ = select.select([sim.stdout], [], [], 15)
            line = sim.stdout.readline() if ready else ""
            assert line, f"llmstack-sim {args} did not start:\n{processes.log(pod_name)}"
            engine = json.loads(line)["engines"][0]
            port = int(engine["url"].rsplit(":", 1)[1])
            assert engine["model"] == flag(container["args"], "--model")

            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": namespace, "labels": template["metadata"]["labels"],
                             "annotations": {**template["metadata"].get("annotations", {}),
                                             "llmstack.io/port": str(port)}},
                "spec": {**template["spec"], "nodeName": "node-1"},
            }  # fmt: skip
            status, created = kapi.request("POST", f"/api/v1/namespaces/{namespace}/pods", pod)
            assert status == 201, created
            status, patched = kapi.request(
                "PATCH", f"/api/v1/namespaces/{namespace}/pods/{pod_name}/status",
                {"status": {"phase": "Running", "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
                            "conditions": [{"type": "Ready", "status": "True"}]}},
                content_type="application/merge-patch+json")  # fmt: skip
            assert status == 200, patched
            pods[pod_name] = (created["metadata"]["uid"], f"http://{pod_ip}:{port}", engine["model"])
    return pods, kv_configs


def run_installed_release(kapi, namespace, release, processes, tmp_path):
    selector = f"app.kubernetes.io/instance%3D{release}"
    status, body = kapi.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments?labelSelector={selector}")
    assert status == 200, body
    deployments = {d["metadata"]["name"]: d for d in body["items"]}
    router_name = f"{release}-router"
    assert sorted(deployments) == sorted([router_name, f"{release}-llama3-engine", f"{release}-qwen-engine"])

    # The chart's RBAC: pods get/list/watch in the release namespace, nothing else.
    sa = deployments[router_name]["spec"]["template"]["spec"]["serviceAccountName"]
    for verb in ("get", "list", "watch"):
        assert allowed(kapi, namespace, sa, verb, "pods")
    assert not allowed(kapi, namespace, sa, "patch", "pods")
    assert not allowed(kapi, namespace, sa, "delete", "pods")
    assert not allowed(kapi, namespace, sa, "get", "secrets")
    assert not allowed(kapi, namespace, sa, "list", "pods", ns="default")
    assert not allowed(kapi, namespace, sa, "list", "endpointslices", group="discovery.k8s.io")

    pods, kv_configs = start_engine_pods(kapi, namespace, deployments, router_name, processes)
    assert all((kv["endpoint"], kv["replay_endpoint"]) == ("tcp://*:5557", "tcp://*:5558")
               for kv in kv_configs.values())
    assert len(pods) == 3

    # The router with its rendered args; overridden: --host/--port (loopback, a free port instead
    # of the pod's 0.0.0.0:8000) and, added, --k8s-kubeconfig (outside a pod there is no mounted
    # ServiceAccount token: the kubeconfig carries a token of the chart's ServiceAccount instead).
    rc = deployments[router_name]["spec"]["template"]["spec"]["containers"][0]
    assert flag(rc["args"], "--k8s-namespace") == namespace
    (port,) = free_loopback_ports(1)
    args = replace_flag(replace_flag(rc["args"], "--host", "127.0.0.1"), "--port", str(port))
    kubeconfig = service_account_kubeconfig(kapi, namespace, sa, tmp_path / "router-kubeconfig")
    router = processes.start("router", [SERVER, *args, "--k8s-kubeconfig", str(kubeconfig)])
    url = f"http://127.0.0.1:{port}"

    def router_log():
        return processes.log("router")

    def all_ready():
        engines = http_json(f"{url}/engines")
        return engines if sorted(e["state"] for e in engines) == ["ready"] * len(pods) else None

    engines = wait_for("the router to find 3 ready engines", all_ready, 20, router_log)
    assert router.poll() is None
    by_id = {e["id"]: e for e in engines}
    assert sorted(by_id) == sorted(f"{name}.{uid[:8]}" for name, (uid, _, _) in pods.items())
    for name, (uid, engine_url, served) in pods.items():
        e = by_id[f"{name}.{uid[:8]}"]
        assert e["url"] == engine_url
        assert [m["id"] for m in e["models"]] == [served]
        assert e["labels"]["model"] == name.split("-")[1]
    with urllib.request.urlopen(f"{url}/ready", timeout=5) as r:
        assert r.status == 200

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    models = sorted(m.id for m in client.models.list())
    assert models == ["Qwen/Qwen2.5-7B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"]
    for model_id in ("meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct"):
        reply = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "Hello!"}], max_tokens=4,
            extra_body={"ignore_eos": True})  # fmt: skip
        assert reply.model == model_id
        assert reply.usage.completion_tokens == 4
        assert reply.choices[0].message.content

    # Engine pods going away (as the Deployments' pods do once uninstalled): the router's watch
    # drops them.
    for name in pods:
        status, body = kapi.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}?gracePeriodSeconds=0")
        assert status == 200, body
    wait_for("the router to drop the deleted pods", lambda: http_json(f"{url}/engines") == [], 10, router_log)
    assert router.poll() is None, router_log()


def metric_samples(text, name):
    """(labels, value) of every sample of `name` in a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)(?: \d+)?", line)
        if m:
            samples.append((dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[1] or "")), float(m[2])))
    return samples


def by_engine(text, name, **match):
    """The samples of `name` matching `match`, summed per `engine` label."""
    out = {}
    for labels, value in metric_samples(text, name):
        if all(labels.get(k) == v for k, v in match.items()):
            out[labels.get("engine", "")] = out.get(labels.get("engine", ""), 0) + value
    return out


def test_install_kvaware_and_route(kube_apiserver, processes, tmp_path):
    """KVAWARE installed and run like the simulator example above (this test plays the
    controllers and the kubelet): the engines with their rendered --kv-events-config (topic `kv`;
    both sockets on free ports), the router with its rendered kvaware flags, environment and
    volumes: the tokenizer volume and the Hugging Face cache are directories holding
    llmstack-tokenize's fixture tokenizer (for LLAMA by path, for QWEN by model id). The router
    subscribes to every engine's KV events (found through GET /kv_event_sources), applies the
    batches the requests make, and routes as kvaware with a tokenizer for both models."""
    kapi, namespace, release = kube_apiserver, "kv-e2e", "kv"
    with helm.Config(namespace=namespace, kubeconfig_path=str(kapi.kubeconfig_path)) as cfg:
        installed = cfg.install(str(CHART), release, KVAWARE, namespace=namespace, create_namespace=True, timeout=60)
        assert installed["status"] == "deployed", installed
        try:
            run_kvaware_release(kapi, namespace, processes, tmp_path)
        finally:
            cfg.uninstall(release, timeout=60)


def run_kvaware_release(kapi, namespace, processes, tmp_path):
    status, body = kapi.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments")
    assert status == 200, body
    deployments = {d["metadata"]["name"]: d for d in body["items"]}
    router_name = "kv-llmstack-router"
    assert sorted(deployments) == sorted([router_name, "kv-llmstack-llama3-engine", "kv-llmstack-qwen-engine"])
    pods, kv_configs = start_engine_pods(kapi, namespace, deployments, router_name, processes)
    assert len(pods) == 3
    assert all(kv["topic"] == "kv" for kv in kv_configs.values())

    # The kubelet's part for the router's volumes: each mountPath becomes a local directory
    # (the tokenizer PVC: llama3/; the Hugging Face cache: hub/models--Qwen--…), and the
    # rendered paths under it (--tokenizer, HF_HOME) are rewritten to it.
    template = deployments[router_name]["spec"]["template"]["spec"]
    rc = template["containers"][0]
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in template["volumes"]}
    mounts = {m["mountPath"]: tmp_path / "volumes" / claims[m["name"]] for m in rc["volumeMounts"]}
    assert all(m["readOnly"] for m in rc["volumeMounts"]) and sorted(claims.values()) == ["hf-cache", "tokenizers"]
    fixture = ROOT / "tests" / "fixtures" / "tokenizer"
    files = ("tokenizer.json", "tokenizer_config.json")
    (mounts["/tokenizers"] / "llama3").mkdir(parents=True)
    repo = mounts["/hf-cache"] / "hub" / f"models--{QWEN.replace('/', '--')}"
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    for f in files:
        shutil.copy(fixture / f, mounts["/tokenizers"] / "llama3" / f)
        shutil.copy(fixture / f, repo / "snapshots" / "0123abcd" / f)

    def local(value):
        for path, directory in mounts.items():
            if value == path or value.startswith(path + "/"):
                return str(directory) + value[len(path):]
        return value

    # The router with its rendered args, paths as mounted; --host/--port and --k8s-kubeconfig as
    # in run_installed_release.
    (port,) = free_loopback_ports(1)
    args = replace_flag(replace_flag(rc["args"], "--host", "127.0.0.1"), "--port", str(port))
    args = [a if i == 0 or args[i - 1] != "--tokenizer" else "=".join([*a.split("=")[:-1], local(a.split("=")[-1])])
            for i, a in enumerate(args)]
    assert flag(args, "--tokenizer") == f"{LLAMA}={mounts['/tokenizers']}/llama3"
    assert (flag(args, "--kv-events-port"), flag(args, "--kv-events-topic")) == ("5600", "kv")
    env = {e["name"]: local(e["value"]) for e in rc["env"]}
    assert env == {"HF_HOME": str(mounts["/hf-cache"])}
    sa = template["serviceAccountName"]
    kubeconfig = service_account_kubeconfig(kapi, namespace, sa, tmp_path / "router-kubeconfig")
    router = processes.start("router", [SERVER, *args, "--k8s-kubeconfig", str(kubeconfig)], env=env)
    url = f"http://127.0.0.1:{port}"

    def router_log():
        return processes.log("router")

    def metrics():
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            return r.read().decode()

    ids = sorted(f"{name}.{uid[:8]}" for name, (uid, _, _) in pods.items())
    wait_for("the router to find 3 ready engines",
             lambda: sorted(e["id"] for e in http_json(f"{url}/engines") if e["state"] == "ready") == ids, 20,
             router_log)  # fmt: skip
    # One subscription per engine (one data-parallel rank each), connected.
    wait_for("a KV-event subscription to every engine",
             lambda: by_engine(metrics(), "llmstack_kv_event_connected") == {i: 1 for i in ids}, 20,
             lambda: router_log() + metrics())  # fmt: skip

    # Each model's tokenizer, loaded once its engines are discovered (until then its requests
    # would be routed as prefixaware, `no_tokenizer`): LLAMA's from the tokenizer volume at
    # the rendered path, QWEN's found by id in the Hugging Face cache at HF_HOME.
    def tokenizers_loaded():
        loaded = {}
        for line in router_log().splitlines():
            fields = json.loads(line).get("fields", {}) if line.startswith("{") else {}
            if fields.get("message", "").startswith("tokenizer loaded"):
                loaded[fields["model"]] = fields["dir"]
        return loaded if len(loaded) == 2 else None

    assert wait_for("both tokenizers to load", tokenizers_loaded, 20, router_log) == {
        LLAMA: str(mounts["/tokenizers"] / "llama3"), QWEN: str(repo / "snapshots" / "0123abcd")}

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=30)
    system = "You are a helpful assistant who answers in one short sentence. " * 12
    for i in range(6):
        for model_id in (LLAMA, QWEN):
            reply = client.chat.completions.create(
                model=model_id, max_tokens=2, extra_body={"ignore_eos": True},
                messages=[{"role": "system", "content": system}, {"role": "user", "content": f"Question {i % 2}"}])
            assert reply.model == model_id and reply.usage.completion_tokens == 2

    # Every engine that served a request published the blocks its prompts filled, and the
    # router applied them.
    served = {e for e, n in by_engine(metrics(), "llmstack_requests_total", status="2xx").items() if e and n}
    assert served and served <= set(ids), served

    def applied():
        text = metrics()
        batches = by_engine(text, "llmstack_kv_event_batches_total")
        stored = by_engine(text, "llmstack_kv_events_total", type="block_stored")
        return all(batches.get(e, 0) > 0 and stored.get(e, 0) > 0 for e in served)

    wait_for("KV-event batches from every engine that served", applied, 20, lambda: router_log() + metrics())
    text = metrics()
    assert sum(by_engine(text, "llmstack_kv_event_decode_errors_total").values()) == 0
    assert sum(by_engine(text, "llmstack_kv_event_gaps_total").values()) == 0
    # Routed by the kvaware policy, with a tokenizer for both models (never `no_tokenizer`).
    decisions = metric_samples(text, "llmstack_routing_decisions_total")
    assert sum(v for labels, v in decisions if labels.get("policy") == "kvaware") >= 1, decisions
    assert not [labels for labels, v in decisions if v and "no_tokenizer" in json.dumps(labels)], decisions
    assert router.poll() is None, router_log()
