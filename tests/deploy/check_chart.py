"""The Helm chart, through helm-sdkpy (Helm's own Go library):

1. Lint (Helm renders every template with values.yaml and checks the output).
2. Render with the chart's defaults, with an everything-on values set, and with each
   deploy/examples/multi-region values file. helm-sdkpy has no `template` action, so the
   chart is installed with HELM_DRIVER=memory (release records stay in memory) against a
   stub Kubernetes API server on loopback that answers discovery and accepts every object;
   the rendered manifest is the one Helm returns in the release. Every rendered object is
   validated against the Kubernetes schemas (kubernetes-validate, strict), and checked.
3. values.schema.json: every example values file, merged over values.yaml, validates
   (jsonschema); bad values are rejected both by jsonschema and by Helm's install.
"""

import asyncio
import copy
import glob
import json
import os
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ["HELM_DRIVER"] = "memory"  # read by the library when a Configuration is made

import helm_sdkpy
import jsonschema
import yaml

from common import (ROOT, by_kind, check, effective_cluster, fail, finish, load_docs, ok,
                    run_wrapper, tern_binary, validate_k8s)

CHART = os.path.join(ROOT, "helm", "tern")
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "deploy", "examples", "multi-region", "*.yaml")))
NAMESPACE = "tern"

# --- a stub API server: discovery, 404 on GET of objects, 201 on create ----------------
RESOURCES = {
    "/api/v1": [("services", "Service"), ("secrets", "Secret"), ("configmaps", "ConfigMap"), ("namespaces", "Namespace")],
    "/apis/apps/v1": [("statefulsets", "StatefulSet")],
    "/apis/policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget")],
    "/apis/monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor")],
}


class StubApi(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"]})
        if path == "/apis":
            groups = []
            for gv in RESOURCES:
                if gv.startswith("/apis/"):
                    group, version = gv[len("/apis/"):].split("/")
                    v = {"groupVersion": f"{group}/{version}", "version": version}
                    groups.append({"name": group, "versions": [v], "preferredVersion": v})
            return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        if path in RESOURCES:
            gv = "v1" if path == "/api/v1" else path[len("/apis/"):]
            return self.reply(200, {
                "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                "resources": [{"name": n, "singularName": "", "namespaced": n != "namespaces", "kind": k,
                               "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}
                              for n, k in RESOURCES[path]]})
        return self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                "reason": "NotFound", "code": 404, "message": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(201)
        self.send_header("Content-Type", self.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", 0), StubApi)
threading.Thread(target=server.serve_forever, daemon=True).start()
tmp = tempfile.mkdtemp()
kubeconfig = os.path.join(tmp, "kubeconfig")
with open(kubeconfig, "w") as f:
    f.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: stub, cluster: {{server: "http://127.0.0.1:{server.server_address[1]}"}}}}]
users: [{{name: stub, user: {{token: stub}}}}]
contexts: [{{name: stub, context: {{cluster: stub, user: stub, namespace: {NAMESPACE}}}}}]
current-context: stub
""")


def render(values, release="tern"):
    config = helm_sdkpy.Configuration(namespace=NAMESPACE, kubeconfig=kubeconfig)
    result = asyncio.run(helm_sdkpy.Install(config).run(release, CHART, values=values, wait=False, timeout=60))
    return load_docs(result["manifest"])


def deep_merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


with open(os.path.join(CHART, "values.yaml")) as f:
    defaults = yaml.safe_load(f)
with open(os.path.join(CHART, "values.schema.json")) as f:
    schema = json.load(f)

# --- 1. lint ------------------------------------------------------------------------------
lint = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration(namespace=NAMESPACE)).run(CHART))
# Severity: 0 unknown, 1 info, 2 warning, 3 error (Helm's support.Severity).
bad = [m for m in lint.get("Messages") or [] if m.get("Severity", 0) >= 2]
check(lint.get("TotalChartsLinted") == 1 and not lint.get("Errors") and not bad,
      f"helm lint: {len(lint.get('Messages') or [])} message(s), none a warning or error {bad}")

# --- 2. render and validate ---------------------------------------------------------------
def check_rendered(docs, values, label):
    for d in docs:
        if d.get("kind") == "ServiceMonitor":
            ep = d["spec"]["endpoints"][0]
            check(d["apiVersion"] == "monitoring.coreos.com/v1" and ep["port"] == "http" and ep["path"] == "/metrics",
                  f"{label}: ServiceMonitor scrapes http /metrics")
        else:
            validate_k8s(d, label)
    sts = by_kind(docs, "StatefulSet")
    if not check(len(sts) == 1, f"{label}: one StatefulSet"):
        return None
    sts = sts[0]
    pod = sts["spec"]["template"]["spec"]
    c = pod["containers"][0]
    check(sts["spec"]["replicas"] == values["replicas"], f"{label}: replicas {values['replicas']}")
    check(pod["enableServiceLinks"] is False and sts["spec"]["podManagementPolicy"] == "Parallel",
          f"{label}: enableServiceLinks false, Parallel")
    check(c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz",
          f"{label}: probes")
    check(c.get("resources") == values["resources"], f"{label}: resources from values")
    headless = sts["spec"]["serviceName"]
    svcs = {s["metadata"]["name"]: s["spec"] for s in by_kind(docs, "Service")}
    check(svcs.get(headless, {}).get("clusterIP") == "None", f"{label}: headless Service {headless}")
    mqtt = [s for s in svcs.values() if any(p["name"] == "mqtt" for p in s["ports"])]
    check(len(mqtt) == 1 and mqtt[0].get("type") == values["mqtt"]["service"]["type"],
          f"{label}: MQTT Service of type {values['mqtt']['service']['type']}")
    quic_lbs = [s for s in svcs.values() if s.get("type") == "LoadBalancer" and any(p["protocol"] == "UDP" for p in s["ports"])]
    want = values["replicas"] if values["quic"]["service"]["type"] == "LoadBalancer" else 0
    check(len(quic_lbs) == want, f"{label}: {want} per-pod UDP LoadBalancer Service(s)")
    pdb = by_kind(docs, "PodDisruptionBudget")
    check(len(pdb) == 1 and pdb[0]["spec"]["maxUnavailable"] == 1, f"{label}: PodDisruptionBudget maxUnavailable 1")
    check(bool(by_kind(docs, "ServiceMonitor")) == values["metrics"]["serviceMonitor"]["enabled"],
          f"{label}: ServiceMonitor only when enabled")
    return sts


def check_pods(sts, values, label, release="tern"):
    """Runs the wrapper for pod 0 and the last pod with the real binary's config show."""
    if tern_binary() is None:
        fail("tern binary not built (cargo build -p tern); cannot run the wrapper script")
        return
    cv = values["cluster"]
    name = sts["metadata"]["name"]
    for ordinal in [0, values["replicas"] - 1]:
        pod = f"{name}-{ordinal}"
        rc, out, err = run_wrapper(sts, pod, NAMESPACE)
        if not check(rc == 0, f"{label}: {pod} wrapper + tern config show exit 0 {err.strip()[:300]}"):
            continue
        cl = effective_cluster(out)
        node_id = cv["nodeIdOffset"] + ordinal
        check(cl.get("node_id") == (node_id if cv["nodeIdOffset"] else None), f"{label}: {pod} node_id {cl.get('node_id')}")
        check(cl["region"] == cv["region"] and cl["voters"] == cv["voters"], f"{label}: {pod} region and voters")
        check(cl["tls"]["node_cert"] == f"/etc/tern/certs/node-{node_id}.pem", f"{label}: {pod} cert {cl['tls']['node_cert']}")
        domain = cv.get("advertiseDomain") or f"{sts['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local"
        check(cl["advertise"] == f"{pod}.{domain}:7946", f"{label}: {pod} advertise {cl['advertise']}")
        local = f"{cv['nodeIdOffset']}@{name}-0.{sts['spec']['serviceName']}.{NAMESPACE}.svc.cluster.local:7946"
        want = list(cv["seeds"]) if ordinal == 0 else [local] + list(cv["seeds"])
        check(cl["seeds"] == want, f"{label}: {pod} seeds {cl['seeds']}")


cases = [("defaults", {})]
cases.append(("everything-on", {
    "replicas": 5,
    "cluster": {"voters": 5, "region": "lab", "nodeIdOffset": 10, "seeds": ["0@tern-0.other.example.com:7946"],
                "advertiseDomain": "lab.example.com"},
    "mqtt": {"service": {"type": "LoadBalancer"}},
    "quic": {"service": {"type": "LoadBalancer"}},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
}))
for path in EXAMPLES:
    with open(path) as f:
        cases.append((f"multi-region/{os.path.basename(path)}", yaml.safe_load(f)))

for label, over in cases:
    values = deep_merge(defaults, over)
    try:
        jsonschema.validate(values, schema)
        ok(f"{label}: values valid against values.schema.json")
    except jsonschema.ValidationError as e:
        fail(f"{label}: values.schema.json rejects the values: {e.message}")
    try:
        docs = render(over)
    except helm_sdkpy.HelmError as e:
        fail(f"{label}: helm could not render: {e}")
        continue
    ok(f"{label}: rendered {len(docs)} objects")
    sts = check_rendered(docs, values, label)
    if sts:
        check_pods(sts, values, label)

# The examples form one cluster: distinct regions and node-id ranges, one bootstrapping release.
ex = [deep_merge(defaults, yaml.safe_load(open(p))) for p in EXAMPLES]
check(len(ex) == 3, "three region values files")
check(len({v["cluster"]["region"] for v in ex}) == 3, "three distinct regions")
ranges = [set(range(v["cluster"]["nodeIdOffset"], v["cluster"]["nodeIdOffset"] + v["replicas"])) for v in ex]
check(sum(len(r) for r in ranges) == len(set().union(*ranges)), "node ids do not overlap between regions")
check(sum(1 for v in ex if not v["cluster"]["seeds"]) == 1, "exactly one region bootstraps (no seeds)")
check(all(v["cluster"]["voters"] == 3 for v in ex), "voters = 3 everywhere")
all_ids = set().union(*ranges)
check(all(int(s.split("@")[0]) in all_ids for v in ex for s in v["cluster"]["seeds"]), "every seed names a node of the cluster")
check(all(v["quic"]["service"]["type"] == "LoadBalancer" and v["cluster"].get("advertiseDomain") for v in ex),
      "every region exposes UDP 7946 per pod and advertises a public name")

# --- 3. bad values are refused --------------------------------------------------------------
for label, over in [("voters 9", {"cluster": {"voters": 9}}),
                    ("unknown key", {"replica": 3}),
                    ("bad seed", {"cluster": {"seeds": ["tern.example.com"]}}),
                    ("bad service type", {"quic": {"service": {"type": "NodePort"}}})]:
    try:
        jsonschema.validate(deep_merge(defaults, over), schema)
        fail(f"values.schema.json accepts bad values ({label})")
    except jsonschema.ValidationError:
        ok(f"values.schema.json rejects bad values ({label})")
    try:
        render(over)
        fail(f"helm renders bad values ({label})")
    except helm_sdkpy.HelmError as e:
        check("schema" in str(e).lower(), f"helm refuses bad values ({label}): {str(e).splitlines()[0][:120]}")

server.shutdown()
finish("check_chart")
