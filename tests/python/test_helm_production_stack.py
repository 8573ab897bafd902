"""production-stack's values on the llmstack chart (docs/helm-production-stack.md).

- data/production-stack-keys.txt: every key of vLLM production-stack's chart (vllm-stack: its
  values.yaml, values.schema.json and the keys its templates read), one dotted path per line,
  list items as `[]`; each one is set in one of our production-stack values files (below), has
  its row in docs/helm-production-stack.md, and is a path of our values.schema.json;
- each values file renders, every object passes the Kubernetes 1.33 schemas (strict; CRD kinds
  against test_helm's trimmed CRD schemas) and a server-side dry run on kube-apiserver 1.20;
- what each key becomes (flags, env, objects), key group by key group;
- what the chart does not implement fails at render, naming the key.
"""

import copy
import pathlib
import re

import pytest
import yaml

import helm_python as helm
from test_helm import (CHART, CRD_SCHEMAS, NAMESPACE, RELEASE, ROOT, Api, cluster_render, create_namespace,
                       dropped_fields, dry_run, flag, kube, model, notes, of_kind, one, render, validate_offline)

assert kube  # the module-scoped apiserver fixture (with the CRDs), used by name below

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
