"""production-stack's values on the llmstack chart (docs/helm-production-stack.md).

- data/production-stack-keys.txt: every key of vLLM production-stack's chart (vllm-stack: its
  values.yaml, values.schema.json and the keys its templates read), one dotted path per line,
  list items as `[]`; each one is set in one of our production-stack values files (below), has
  its row in docs/helm-production-stack.md, and is a path of our values.schema.json;
- each values file renders, every object passes the Kubernetes 1.33 schemas (strict; CRD kinds
  against test_helm's trimmed CRD schemas) and a server-side dry run on kube-apiserver 1.20;
- what each key becomes (flags, env, objects), key group by key group;
- what the chart does not implement fails at render, naming the key;
- a production-stack values file (on the simulator) installed into kube-apiserver and routing,
  with this test playing the kubelet as test_helm does.
"""

import copy
import json
import pathlib
import re
import urllib.request

import pytest
import yaml

import helm_python as helm
from conftest import SERVER, free_loopback_ports
from test_helm import (CHART, CRD_SCHEMAS, NAMESPACE, RELEASE, ROOT, Api, by_engine, cluster_render, create_namespace,
                       dropped_fields, dry_run, flag, http_json, kube, model, notes, of_kind, one, processes, render,
                       replace_flag, router_help_flags, service_account_kubeconfig, start_engine_pods,
                       validate_offline, wait_for)

assert kube and router_help_flags and processes  # fixtures, used by name below

DATA = pathlib.Path(__file__).resolve().parent / "data"
KEYS = [k for k in (DATA / "production-stack-keys.txt").read_text().splitlines() if k and not k.startswith("#")]
DOC = ROOT / "docs" / "helm-production-stack.md"
FILES = {
    "production-stack": ROOT / "examples" / "values-production-stack.yaml",
    "production-stack-static": ROOT / "examples" / "values-production-stack-static.yaml",
    "production-stack-lmcache": ROOT / "examples" / "values-production-stack-lmcache.yaml",
    "production-stack-probes": DATA / "values-production-stack-probes.yaml",
}
VALUES = {name: helm.values_from_yaml(path.read_text()) for name, path in FILES.items()}


def raw(name):
    """The file as YAML reads it (nulls kept: Helm drops them from the values)."""
    return yaml.safe_load(FILES[name].read_text())


def pod(objects, name):
    return one(objects, "Deployment", f"{RELEASE}-llmstack-{name}")["spec"]["template"]["spec"]


def env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# --- the key inventory -----------------------------------------------------------------------------


def present(node, parts):
    """Whether the dotted path (list items as `[]`) is set in a values tree (null counts)."""
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    items = head.endswith("[]")
    key = head[:-2] if items else head
    if not isinstance(node, dict) or key not in node:
        return False
    value = node[key]
    if items:
        return isinstance(value, list) and any(present(v, rest) for v in value)
    return present(value, rest)


def schema_has(schema, parts):
    """Whether our values.schema.json has the path (through items, oneOf, additionalProperties)."""
    if not parts:
        return True
    head, rest = parts[0], parts[1:]
    items = head.endswith("[]")
    key = head[:-2] if items else head
    for alt in [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]:
        props = alt.get("properties", {})
        if key in props:
            sub = props[key]
        elif isinstance(alt.get("additionalProperties"), dict):
            sub = alt["additionalProperties"]
        elif alt.get("type") == "object" and alt.get("additionalProperties", True) is True:
            return True  # an open object (a Kubernetes type, a subchart's values): any key
        else:
            continue
        if items:
            subs = [sub.get("items", {})] + [a.get("items", {}) for a in sub.get("oneOf", [])]
            if any(schema_has(s, rest) for s in subs if s):
                return True
            continue
        if schema_has(sub, rest):
            return True
    return False


def test_inventory_is_the_charts_keys():
    assert len(KEYS) == len(set(KEYS)) > 400
    assert all(re.fullmatch(r"[A-Za-z][-A-Za-z0-9_]*(\[\])?(\.[A-Za-z][-A-Za-z0-9_]*(\[\])?)*", k) for k in KEYS)
    for must in ("servingEngineSpec.modelSpec[].vllmConfig.enableChunkedPrefill", "routerSpec.otel.secure",
                 "routerSpec.route.main.parentRefs", "cacheserverSpec.serde", "loraAdapters[].adapterSource.type"):
        assert must in KEYS


def test_every_key_is_in_a_values_file():
    trees = [raw(name) for name in FILES]
    missing = [k for k in KEYS if not any(present(t, k.split(".")) for t in trees)]
    assert missing == []


def test_every_key_has_a_row_in_the_translation_table():
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([^`]+)` \| (same|mapped|not yet) \| (.+) \|$", line)
        if m:
            assert m.group(1) not in rows, f"two rows for {m.group(1)}"
            rows[m.group(1)] = m.group(2)
    assert [k for k in KEYS if k not in rows] == []
    assert [k for k in rows if k not in KEYS] == []


def test_every_key_is_in_the_schema():
    with helm.Chart.load(str(CHART)) as c:
        schema = c.schema
    assert [k for k in KEYS if not schema_has(schema, k.split("."))] == []
    assert not schema_has(schema, ["routerSpec", "routingLogics"])  # still strict for typos


# --- the values files: render, Kubernetes 1.33, kube-apiserver 1.20 --------------------------------


@pytest.mark.parametrize("name", list(FILES))
def test_values_file_passes_the_schema_and_kubernetes_1_33(name):
    with helm.Chart.load(str(CHART)) as c:
        c.validate_schema(c.merge_values(VALUES[name]))
    objects = render(VALUES[name])
    assert objects
    for obj in objects:
        validate_offline(obj)


def strip_empty(value):
    """Empty strings, maps and lists dropped (the apiserver leaves `omitempty` fields out)."""
    if isinstance(value, dict):
        return {k: strip_empty(v) for k, v in value.items() if v not in ("", {}, [], None)}
    if isinstance(value, list):
        return [strip_empty(v) for v in value]
    return value


def without_grpc_probes(values):
    """Probe.grpc is Kubernetes 1.24+ (Helm refuses it against 1.20's OpenAPI): on 1.20 the engine
    probes with grpc become tcpSocket probes on the same port; the 1.33 test above keeps them."""
    values = copy.deepcopy(values)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        p = values.get("servingEngineSpec", {}).get(probe, {})
        if "grpc" in p:
            p["tcpSocket"] = {"port": p.pop("grpc")["port"]}
    return values


@pytest.mark.parametrize("name", list(FILES))
def test_values_file_dry_run_on_kube_1_20(kube, name):
    namespace = f"ps-{name}"
    create_namespace(kube, namespace)
    api = Api(kube)
    objects = cluster_render(kube, without_grpc_probes(VALUES[name]), namespace)
    posted = 0
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            validate_offline(obj)
            continue
        status, body = dry_run(kube, api, obj, namespace)
        assert status == 201, f"{obj['kind']}/{obj['metadata']['name']}: {status} {body}"
        assert dropped_fields(strip_empty(obj), body) == [], f"{obj['kind']}/{obj['metadata']['name']}"
        posted += 1
    assert posted >= 5


# --- what the keys become --------------------------------------------------------------------------


def test_engine_keys_become_vllm_flags_env_and_pod_fields(router_help_flags):
    objects = render(VALUES["production-stack"])
    assert not [o for o in objects if "disabled" in o["metadata"]["name"]]  # enabled: false
    llama = pod(objects, "llama3-engine")
    vllm, sidecar = llama["containers"]
    args = vllm["args"]
    assert vllm["command"] == ["/opt/venv/bin/vllm", "serve"]  # lmcache/vllm-openai
    for f in ("--enable-chunked-prefill", "--enable-lora", "--enable-auto-tool-choice", "--enable-prefix-caching"):
        assert f in args
    assert (flag(args, "--max-loras"), flag(args, "--tool-call-parser"), flag(args, "--revision")) == (
        "4", "llama3_json", "main")
    assert flag(args, "--chat-template") == "/templates/llama3.jinja"
    assert flag(args, "--gpu-memory-utilization") == "0.9" and flag(args, "--tensor-parallel-size") == "2"
    assert args[-1] == "--disable-log-requests"
    e = env(vllm)
    assert e["VLLM_USE_V1"] == "1" and e["PROMETHEUS_MULTIPROC_DIR"] == "/tmp/prometheus"
    assert e["LMCACHE_MAX_LOCAL_CPU_SIZE"] == "30" and e["VLLM_RPC_TIMEOUT"] == "1000000"
    assert e["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] == "1" and e["OMP_NUM_THREADS"] == "4"  # global env, then the model's
    assert e["VLLM_API_KEY"] == {"secretKeyRef": {"name": "vllm-api-key", "key": "key"}}
    assert vllm["envFrom"] == [{"configMapRef": {"name": "demo-llmstack-configs"}},
                               {"secretRef": {"name": "s3-credentials"}}]
    assert one(objects, "ConfigMap", "demo-llmstack-configs")["data"] == {"VLLM_LOGGING_LEVEL": "INFO"}
    assert vllm["securityContext"] == {"runAsNonRoot": False} and vllm["imagePullPolicy"] == "IfNotPresent"
    assert vllm["startupProbe"]["httpGet"]["port"] == "http" and vllm["startupProbe"]["failureThreshold"] == 60
    assert "httpGet" not in vllm["livenessProbe"] and vllm["livenessProbe"]["exec"]
    assert vllm["readinessProbe"]["tcpSocket"] == {"port": 8000} and "httpGet" not in vllm["readinessProbe"]
    assert {"name": "scratch", "mountPath": "/scratch"} in vllm["volumeMounts"]
    assert sidecar["name"] == "sidecar" and sidecar["image"] == "lmcache/lmstack-sidecar:latest"
    init = llama["initContainers"][0]
    assert (init["name"], init["image"], init["args"]) == ("fetch-weights", "busybox:1.37", ["ls /data"])
    assert {"name": "storage", "mountPath": "/data"} in init["volumeMounts"]
    assert (llama["runtimeClassName"], llama["schedulerName"], llama["serviceAccountName"]) == (
        "nvidia", "default-scheduler", "default")
    assert llama["imagePullSecrets"] == [{"name": "regcred"}] and llama["securityContext"] == {"fsGroup": 1000}
    assert [t["key"] for t in llama["tolerations"]] == ["nvidia.com/gpu", "dedicated"]  # append
    assert llama["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    dep = one(objects, "Deployment", "demo-llmstack-llama3-engine")
    assert dep["metadata"]["annotations"] == {"example.com/owner": "ml-platform"}
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert (labels["team"], labels["tier"], labels["environment"]) == ("ml", "gpu", "prod")
    assert one(objects, "ConfigMap", "demo-llmstack-llama3-engine-chat-template")["data"]["llama3.jinja"]
    pvc = one(objects, "PersistentVolumeClaim", "demo-llmstack-llama3-engine-storage")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"] and pvc["spec"]["storageClassName"] == "standard"
    assert pvc["metadata"]["labels"]["backup"] == "false" and pvc["metadata"]["annotations"]
    pdb = one(objects, "PodDisruptionBudget", "demo-llmstack-llama3-engine")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"]["model"] == "llama3"
    service = one(objects, "Service", "demo-llmstack-llama3-engine")
    assert service["spec"]["ports"][1]["name"] == "metrics-alt"
    assert service["metadata"]["annotations"] == {"example.com/expose": "internal"}

    embed = pod(objects, "embed-engine")
    c = embed["containers"][0]
    assert (flag(c["args"], "--runner"), flag(c["args"], "--convert")) == ("pooling", "embed")
    assert c["resources"]["requests"] == {"cpu": "2", "memory": "8Gi", "nvidia.com/mig-4g.71gb": "1",
                                          "nvidia.com/gpumem": "3000", "nvidia.com/gpumem-percentage": "80",
                                          "nvidia.com/gpucores": "10"}
    assert embed["tolerations"] == [{"key": "mig", "operator": "Exists"}]  # override
    assert "preferredDuringSchedulingIgnoredDuringExecution" in embed["affinity"]["nodeAffinity"]
    assert {"name": "storage", "emptyDir": {"sizeLimit": "20Gi"}} in embed["volumes"]
    so = one(objects, "ScaledObject", "demo-llmstack-embed-engine")["spec"]
    assert so["minReplicaCount"] == 0 and so["idleReplicaCount"] == 0 and so["initialCooldownPeriod"] == 60
    assert so["fallback"] == {"failureThreshold": 3, "replicas": 1}
    assert so["advanced"]["scalingModifiers"]["formula"] == "llmstack_requests_waiting"
    assert so["triggers"] == [{"type": "prometheus", "metadata": {
        "serverAddress": "http://prometheus-operated.monitoring.svc:9090", "metricName": "llmstack_requests_waiting",
        "query": "sum(llmstack_queue_depth)", "threshold": "5"}}]

    qwen = pod(objects, "qwen-engine")
    assert qwen["nodeName"] == "gpu-node-1" and "affinity" not in qwen
    # Keys production-stack's tutorials set and its chart ignores: read here.
    assert qwen["containers"][0]["args"][-1] == "--max-model-len=8192"
    assert qwen["nodeSelector"] == {"kubernetes.io/os": "linux", "node.kubernetes.io/instance-type": "gpu"}
    assert llama["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": "models"}} in qwen["volumes"]
    assert qwen["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}  # raw resources
    assert not [p for p in of_kind(objects, "PersistentVolumeClaim") if "qwen" in p["metadata"]["name"]]


def test_router_keys(router_help_flags):
    values = VALUES["production-stack"]
    objects = render(values)
    router = pod(objects, "router")
    c = router["containers"][0]
    args = c["args"]
    assert c["image"] == "ghcr.io/llmstack/llmstack-server:0.1.0"  # production-stack's image, mapped
    assert {a for a in args if a.startswith("--")} <= router_help_flags
    assert flag(args, "--otel-endpoint") == "http://otel-collector.observability.svc:4318"
    assert flag(args, "--otel-service-name") == "vllm-router"
    assert flag(args, "--engine-stats-interval") == "15" and flag(args, "--session-key") == "x-user-id"
    assert flag(args, "--k8s-service-discovery-type") == "pod-ip"
    assert args[-2:] == ["--health-check-failure-threshold", "3"]
    e = env(c)
    assert e["VLLM_API_KEY"] == {"secretKeyRef": {"name": "vllm-api-key", "key": "key"}}
    assert e["HF_TOKEN"] == {"secretKeyRef": {"name": "demo-llmstack-secrets", "key": "router_hf_token"}}
    secret = one(objects, "Secret", "demo-llmstack-secrets")
    assert list(secret["data"]) == ["router_hf_token"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] == "http", probe
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready" and c["livenessProbe"]["initialDelaySeconds"] == 30
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
    assert router["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000}
    assert router["imagePullSecrets"] == [{"name": "regcred"}]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"] and {"name": "tmp", "emptyDir": {}} in router[
        "volumes"]
    assert router["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    dep = one(objects, "Deployment", "demo-llmstack-router")
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == "100%"
    service = one(objects, "Service", "demo-llmstack-router")
    assert service["spec"]["type"] == "NodePort" and service["spec"]["ports"][0]["nodePort"] == 30080
    assert service["spec"]["ports"][1]["name"] == "admin"
    assert one(objects, "PodDisruptionBudget", "demo-llmstack-router")["spec"]["maxUnavailable"] == 1
    ingress = one(objects, "Ingress", "demo-llmstack-router")["spec"]
    assert ingress["ingressClassName"] == "nginx" and ingress["tls"] == [
        {"hosts": ["llm.example.com"], "secretName": "llm-tls"}]
    assert ingress["rules"][0]["http"]["paths"][0]["backend"]["service"] == {
        "name": "demo-llmstack-router", "port": {"name": "http"}}
    main = one(objects, "HTTPRoute", "demo-llmstack-router")["spec"]
    assert main["rules"][0]["backendRefs"] == [{"name": "demo-llmstack-router", "port": 80}]  # additionalRules, tpl
    assert main["rules"][1]["backendRefs"] == [{"name": "demo-llmstack-router", "port": 80}]
    assert main["rules"][1]["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    redirect = one(objects, "HTTPRoute", "demo-llmstack-router-redirect")["spec"]
    assert redirect["rules"] == [{"filters": [{"type": "RequestRedirect", "requestRedirect": {
        "scheme": "https", "statusCode": 301}}]}]
    monitors = {m["metadata"]["name"]: m for m in of_kind(objects, "ServiceMonitor")}  # explicit: rendered offline
    assert monitors["demo-llmstack-router"]["spec"]["endpoints"][0]["honorLabels"] is True
    assert monitors["demo-llmstack-router"]["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    engines = monitors["demo-llmstack-engines"]["spec"]["endpoints"][0]
    assert engines["interval"] == "30s" and engines["scrapeTimeout"] == "25s" and len(engines["relabelings"]) == 2
    dashboards = [m for m in of_kind(objects, "ConfigMap") if "dashboard" in m["metadata"]["name"]]
    assert dashboards and all(m["metadata"]["annotations"] == {"grafana_folder": "LLM"} for m in dashboards)
    assert one(objects, "ConfigMap", "demo-extra")["data"] == {"release": "demo"}  # extraObjects, tpl
    text = notes(values)
    assert "routerSpec.repository lmcache/lmstack-router is production-stack's router" in text
    assert "  - routerSpec.requestStatsWindow:" in text and "no ServiceMonitors were created" not in text
    # grafanaDashboards.enabled: false wins over observability's default.
    off = render({**values, "grafanaDashboards": {"enabled": False}})
    assert not [m for m in of_kind(off, "ConfigMap") if "dashboard" in m["metadata"]["name"]]
    # routerSpec.serviceAccountName: an existing ServiceAccount, no RBAC.
    sa = render({"routerSpec": {"serviceAccountName": "mine"}})
    assert pod(sa, "router")["serviceAccountName"] == "mine" and not of_kind(sa, "Role")


def test_static_discovery_and_rwo_warning(router_help_flags):
    values = VALUES["production-stack-static"]
    objects = render(values)
    args = pod(objects, "router")["containers"][0]["args"]
    assert flag(args, "--service-discovery") == "static"
    assert flag(args, "--static-backends") == "http://llmstack-opt-engine.default.svc:80"
    assert flag(args, "--static-models") == "facebook/opt-125m"
    assert not [a for a in args if a.startswith("--k8s-")] and {a for a in args if a.startswith("--")} <= (
        router_help_flags)
    assert pod(objects, "opt-engine")["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    dep = one(objects, "Deployment", "demo-llmstack-opt-engine")
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert "Warning: servingEngineSpec.modelSpec[opt] runs up to 2 replicas on one ReadWriteOnce PVC" in notes(values)


def test_lmcache_keys_become_engine_env():
    values = VALUES["production-stack-lmcache"]
    objects = render(values)
    offload = pod(objects, "offload-engine")["containers"][0]
    e = env(offload)
    assert json_arg(offload, "--kv-transfer-config") == {"kv_connector": "LMCacheConnector", "kv_role": "kv_both"}
    assert e["VLLM_USE_V1"] == "0" and e["CUDA_VISIBLE_DEVICES"] == "0" and e["LMCACHE_LOG_LEVEL"] == "WARNING"
    assert (e["LMCACHE_MAX_LOCAL_CPU_SIZE"], e["LMCACHE_MAX_LOCAL_DISK_SIZE"]) == ("40", "100")
    assert e["LMCACHE_ENABLE_CONTROLLER"] == "True" and e["LMCACHE_LMCACHE_INSTANCE_ID"] == "offload-0"
    assert e["LMCACHE_CONTROLLER_PULL_URL"] == "demo-llmstack-router:9000"
    assert e["LMCACHE_CONTROLLER_REPLY_URL"] == "demo-llmstack-router:9001"
    assert (e["LMCACHE_LMCACHE_WORKER_PORTS"], e["LMCACHE_P2P_HOST"], e["LMCACHE_P2P_INIT_PORTS"]) == (
        "8001,8002", "0.0.0.0", "8200")
    assert e["LMCACHE_LMCACHE_WORKER_HEARTBEAT_TIME"] == "10"
    assert e["HF_TOKEN"] == {"secretKeyRef": {"name": "demo-llmstack-secrets", "key": "hf_token_offload"}}
    assert offload["livenessProbe"]["httpGet"]["port"] == "http"  # container-port
    prefill_pod = pod(objects, "prefill-engine")
    prefill = prefill_pod["containers"][0]
    assert prefill_pod["hostIPC"] is True and prefill_pod["hostPID"] is True
    assert json_arg(prefill, "--kv-transfer-config") == {
        "kv_connector": "LMCacheConnectorV1", "kv_role": "kv_producer",
        "kv_connector_extra_config": {"discard_partial_chunks": False, "lmcache_rpc_port": "sender"}}
    e = env(prefill)
    assert (e["LMCACHE_LOCAL_CPU"], e["LMCACHE_MAX_LOCAL_CPU_SIZE"], e["UCX_TLS"]) == (
        "False", "0", "cuda_ipc,cuda_copy,tcp")
    assert (e["LMCACHE_ENABLE_NIXL"], e["LMCACHE_NIXL_ROLE"], e["LMCACHE_NIXL_RECEIVER_HOST"]) == (
        "True", "sender", "llmstack-decode-engine")
    assert (e["LMCACHE_NIXL_RECEIVER_PORT"], e["LMCACHE_NIXL_BUFFER_SIZE"], e["LMCACHE_NIXL_BUFFER_DEVICE"],
            e["LMCACHE_NIXL_ENABLE_GC"]) == ("55555", "1073741824", "cuda", "True")
    assert flag(pod(objects, "router")["containers"][0]["args"], "--routing-logic") == "kvaware"
    text = notes(values)
    for key in ("requestStatsWindow", "lmcacheConfig.logLevel", "lmcacheControllerPort",
                "lmcacheControllerReplyPort", "lmcacheControllerHeartbeatPort"):
        assert f"  - routerSpec.{key}: " in text, key


def test_root_path_and_otel_over_grpc_with_tls_reach_the_router():
    """routerSpec.rootPath and otel.secure are the router's --root-path and --otel-secure;
    production-stack's endpoint form host:4317 is OTLP/gRPC."""
    values = {"routerSpec": {"rootPath": "/vllm", "otel": {
        "endpoint": "otel-collector.observability:4317", "serviceName": "router", "secure": True}}}
    args = pod(render(values), "router")["containers"][0]["args"]
    assert flag(args, "--root-path") == "/vllm"
    assert flag(args, "--otel-endpoint") == "otel-collector.observability:4317"
    assert "--otel-secure" in args
    assert "routerSpec.rootPath" not in notes(values)
    plain = pod(render({"routerSpec": {"otel": {"endpoint": "c:4317"}}}), "router")["containers"][0]["args"]
    assert "--otel-secure" not in plain and "--root-path" not in plain


def json_arg(container, name):
    return json.loads(flag(container["args"], name))


def test_rwo_pvc_with_replicas_warns():
    """Replicas sharing a ReadWriteOnce claim are scheduled by Kubernetes onto the node that mounts
    it: the chart renders them (Recreate strategy) and NOTES.txt warns; one replica, or
    ReadWriteMany, no warning."""
    for spec in (model(replicaCount=2, pvcStorage="50Gi"), model(pvcStorage="50Gi", keda={"enabled": True})):
        values = {"servingEngineSpec": {"modelSpec": [spec]}}
        dep = one(render(values), "Deployment", "demo-llmstack-m-engine")
        assert dep["spec"]["strategy"] == {"type": "Recreate"}
        max_replicas = 2 if "replicaCount" in spec else 4
        assert (f"Warning: servingEngineSpec.modelSpec[m] runs up to {max_replicas} replicas on one ReadWriteOnce "
                "PVC") in notes(values)
    for spec in (model(pvcStorage="50Gi"), model(replicaCount=3, pvcStorage="50Gi", pvcAccessMode="ReadWriteMany")):
        assert "Warning" not in notes({"servingEngineSpec": {"modelSpec": [spec]}})


# --- not implemented yet: refused at render, naming the key ----------------------------------------

NOT_YET = {
    "cacheserverSpec.enabled": {"cacheserverSpec": {"enabled": True}},
    "loraAdapters[0].enabled": {"loraAdapters": [{"name": "a", "baseModel": "m"}]},
    "loraController.enableLoraController": {"loraController": {"enableLoraController": True}},
    "sharedPvcStorage.enabled": {"sharedPvcStorage": {"enabled": True}},
    "kube-prometheus-stack.enabled": {"kube-prometheus-stack": {"enabled": True}},
    "prometheus-adapter.enabled": {"prometheus-adapter": {"enabled": True}},
    "servingEngineSpec.modelSpec[m].raySpec.enabled": {
        "servingEngineSpec": {"modelSpec": [model(raySpec={"enabled": True})]}},
    "routerSpec.routingLogic disaggregated_prefill:": {"routerSpec": {"routingLogic": "disaggregated_prefill"}},
    "routerSpec.routingLogic disaggregated_prefill_orchestrated:": {
        "routerSpec": {"routingLogic": "disaggregated_prefill_orchestrated"}},
    "routerSpec.k8sServiceDiscoveryType service-name": {"routerSpec": {"k8sServiceDiscoveryType": "service-name"}},
    "routerSpec.enablePD": {"routerSpec": {"enablePD": True}},
    "routerSpec.otel.secure": {"routerSpec": {"otel": {"endpoint": "http://c:4318", "secure": True}}},
    "routerSpec.serviceType ExternalName": {"routerSpec": {"serviceType": "ExternalName"}},
    "routerSpec.autoscaling.minReplicas 0": {"routerSpec": {"autoscaling": {"enabled": True, "minReplicas": 0}}},
    "routerSpec.staticBackends is required": {"routerSpec": {"serviceDiscovery": "static"}},
}


@pytest.mark.parametrize("key", list(NOT_YET))
def test_not_implemented_fails_naming_the_key(key):
    values = NOT_YET[key]
    with helm.Chart.load(str(CHART)) as c:
        c.validate_schema(c.merge_values(values))  # accepted by the schema ...
        with pytest.raises(helm.HelmError, match=re.escape(key)):  # ... refused at render, by name
            c.render(values, name=RELEASE, namespace=NAMESPACE)


def test_every_not_yet_switch_has_its_failure_test():
    """Each `not yet` key of the table that switches a feature on is refused by a case above."""
    switches = []
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([^`]+)` \| not yet \| (.+) \|$", line)
        if m and re.search(r"(^|[:;] )(true|Any entry not disabled) fails at render", m.group(2)):
            switches.append(m.group(1))
    assert len(switches) >= 7
    for key in switches:
        pattern = re.escape(key).replace(r"\[\]", r"\[[^]]*\]")
        assert any(re.match(pattern, case) for case in NOT_YET), key


def test_off_is_accepted():
    """The same sections switched off (production-stack's defaults) render."""
    objects = render({"cacheserverSpec": {"enabled": False}, "loraAdapters": [{"name": "a", "enabled": False}],
                      "loraController": {"enableLoraController": False}, "sharedPvcStorage": {"enabled": False},
                      "kube-prometheus-stack": {"enabled": False}, "prometheus-adapter": {"enabled": False},
                      "servingEngineSpec": {"modelSpec": [model(raySpec={"enabled": False})]},
                      "routerSpec": {"otel": {"secure": False}, "k8sServiceDiscoveryType": "pod-ip"}})
    assert one(objects, "Deployment", "demo-llmstack-m-engine")


def test_schema_accepts_production_stack_types_and_stays_strict():
    good = {"servingEngineSpec": {"vllmApiKey": {"secretName": "", "secretKey": ""}, "modelSpec": [
        model(requestGPU=1.5, pvcAccessMode=["ReadWriteOnce"], hf_token={"secretName": "", "secretKey": ""},
              vllmConfig={"gpuMemoryUtilization": "0.95"}),
        model(name="n", requestGPU="2", pvcStorage={"emptyDir": {}})]},
        "routerSpec": {"nodePort": None, "pdb": {"minAvailable": None, "maxUnavailable": "50%"}}}
    with helm.Chart.load(str(CHART)) as c:
        c.validate_schema(c.merge_values(good))
        for bad, where in [({"routerSpec": {"otel": {"endpont": "x"}}}, "endpont"),
                           ({"servingEngineSpec": {"modelSpec": [model(vllmConfig={"maxLora": 2})]}}, "maxLora"),
                           ({"servingEngineSpec": {"modelSpec": [model(requestGPU="two")]}}, "requestGPU"),
                           ({"servingEngineSpec": {"modelSpec": [model(pvcAccessMode=["ReadWriteSome"])]}},
                            "pvcAccessMode"),
                           ({"routerSpec": {"routingLogic": "fastest"}}, "routingLogic"),
                           ({"cacheserverSpec": {"enable": True}}, "enable")]:
            with pytest.raises(helm.HelmValuesError, match=where):
                c.validate_schema(c.merge_values(bad))
    # {secretName: ""} is no key at all: no VLLM_API_KEY, no HF_TOKEN.
    objects = render(good)
    assert "VLLM_API_KEY" not in env(pod(objects, "m-engine")["containers"][0])
    assert "HF_TOKEN" not in env(pod(objects, "m-engine")["containers"][0])


def test_pipeline_parallel_requests_its_gpus():
    objects = render(VALUES["production-stack-probes"])
    c = pod(objects, "opt-engine")["containers"][0]
    assert flag(c["args"], "--pipeline-parallel-size") == "2"
    assert c["resources"] == {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}
    assert {"name": "shm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    with pytest.raises(helm.HelmError, match=re.escape(
            "requestGPU (2) is less than vllmConfig.tensorParallelSize x pipelineParallelSize (2 x 2)")):
        render({"servingEngineSpec": {"modelSpec": [model(requestGPU=2, vllmConfig={
            "tensorParallelSize": 2, "pipelineParallelSize": 2})]}})


@pytest.mark.parametrize("name", list(FILES))
def test_values_file_lints_clean(name):
    for kube_version in ("v1.20.2", "v1.33.0"):
        values = without_grpc_probes(VALUES[name]) if kube_version == "v1.20.2" else VALUES[name]
        report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version=kube_version)
        assert report["errors"] == [], report
        assert {m["error"] for m in report["messages"]} <= {"icon is recommended"}, report


def test_production_stack_router_flags_are_refused_in_extra_args():
    """The flags the production-stack keys add are in the extraArgs refusal list too (a flag given
    twice stops llmstack-server)."""
    for values in ({"otel": {"endpoint": "http://c:4318", "serviceName": "r"}, "k8sServiceDiscoveryType": "pod-ip"},
                   {"serviceDiscovery": "static", "staticBackends": "http://e:8000", "staticModels": "m"}):
        args = pod(render({"routerSpec": values}), "router")["containers"][0]["args"]
        for f in [a for a in args if a.startswith("--")]:
            with pytest.raises(helm.HelmError, match=re.escape(f"routerSpec.extraArgs: {f} is already passed")):
                render({"routerSpec": {**values, "extraArgs": [f, "1"]}})


# --- installed and routing -----------------------------------------------------------------------

# A production-stack values file as its users write them (the router's image and labels, its
# probes' port name, its scrape interval, a disabled model, pod labels), on the simulator so that
# it runs here.
SIM_RELEASE = {
    "servingEngineSpec": {
        "engine": "sim", "simProfile": "instant",
        "labels": {"environment": "test", "release": "test"},
        "modelSpec": [
            {"name": "opt", "modelURL": "facebook/opt-125m", "replicaCount": 2, "enabled": True,
             "podLabels": {"team": "ml"}, "vllmConfig": {"maxModelLen": 2048}},
            {"name": "off", "enabled": False, "modelURL": "facebook/opt-350m"},
        ],
    },
    "routerSpec": {
        "repository": "lmcache/lmstack-router", "tag": "latest", "imagePullPolicy": "Always",
        "routingLogic": "session", "sessionKey": "x-user-id", "engineScrapeInterval": 2,
        "requestStatsWindow": 60, "k8sServiceDiscoveryType": "pod-ip",
        "labels": {"environment": "router", "release": "router"},
        "livenessProbe": {"initialDelaySeconds": 30, "httpGet": {"path": "/health", "port": "router-port"}},
        "otel": {"endpoint": "", "serviceName": "vllm-router", "secure": False},
    },
    "grafanaDashboards": {"enabled": False},
}


def test_install_production_stack_values_and_route(kube_apiserver, processes, tmp_path):
    kapi, namespace, release = kube_apiserver, "ps-e2e", "ps"
    with helm.Config(namespace=namespace, kubeconfig_path=str(kapi.kubeconfig_path)) as cfg:
        installed = cfg.install(str(CHART), release, SIM_RELEASE, namespace=namespace, create_namespace=True,
                                timeout=60)
        assert installed["status"] == "deployed", installed
        try:
            status, body = kapi.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments")
            assert status == 200, body
            deployments = {d["metadata"]["name"]: d for d in body["items"]}
            router_name = f"{release}-llmstack-router"
            assert sorted(deployments) == [f"{release}-llmstack-opt-engine", router_name]
            pods, _ = start_engine_pods(kapi, namespace, deployments, router_name, processes)
            assert len(pods) == 2

            spec = deployments[router_name]["spec"]["template"]["spec"]
            rc = spec["containers"][0]
            assert rc["image"].startswith("ghcr.io/llmstack/llmstack-server:")
            assert rc["livenessProbe"]["httpGet"]["port"] == "http"
            assert flag(rc["args"], "--engine-stats-interval") == "2"
            (port,) = free_loopback_ports(1)
            args = replace_flag(replace_flag(rc["args"], "--host", "127.0.0.1"), "--port", str(port))
            kubeconfig = service_account_kubeconfig(kapi, namespace, spec["serviceAccountName"],
                                                    tmp_path / "router-kubeconfig")
            router = processes.start("router", [SERVER, *args, "--k8s-kubeconfig", str(kubeconfig)])
            url = f"http://127.0.0.1:{port}"

            def ready():
                engines = http_json(f"{url}/engines")
                return engines if [e["state"] for e in engines] == ["ready", "ready"] else None

            wait_for("the router to find 2 ready engines", ready, 20, lambda: processes.log("router"))
            # Session routing on production-stack's sessionKey: one user's requests, one engine.
            for _ in range(4):
                req = urllib.request.Request(
                    f"{url}/v1/chat/completions", method="POST",
                    headers={"content-type": "application/json", "x-user-id": "alice"},
                    data=json.dumps({"model": "facebook/opt-125m", "max_tokens": 2,
                                     "messages": [{"role": "user", "content": "Hi"}]}).encode())
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.status == 200
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
                served = by_engine(r.read().decode(), "llmstack_requests_total", status="2xx")
            assert [n for e, n in served.items() if e and n] == [4], served
            assert router.poll() is None, processes.log("router")
        finally:
            cfg.uninstall(release, timeout=60)

