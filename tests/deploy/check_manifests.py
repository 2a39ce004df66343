"""Validates deploy/kubernetes/*.yaml against the Kubernetes schemas (kubernetes-validate,
strict) and checks what the StatefulSet must do; runs its wrapper script with the real
tern binary (`tern config show` in place of `tern serve`) for pods 0 and 2."""

import glob
import os

from common import (ROOT, by_kind, check, effective_cluster, fail, finish, load_docs,
                    ok, run_wrapper, tern_binary, validate_k8s)

files = sorted(glob.glob(os.path.join(ROOT, "deploy", "kubernetes", "*.yaml")))
check(len(files) >= 3, f"manifests found: {[os.path.basename(f) for f in files]}")
docs = []
for path in files:
    with open(path) as f:
        file_docs = load_docs(f.read())
    check(file_docs, f"{os.path.basename(path)} has objects")
    for d in file_docs:
        validate_k8s(d, os.path.basename(path))
    docs += file_docs

sts = by_kind(docs, "StatefulSet")
check(len(sts) == 1, "one StatefulSet")
sts = sts[0]
spec = sts["spec"]
pod = spec["template"]["spec"]
c = pod["containers"][0]
env = {e["name"]: e.get("value") for e in c["env"]}
check(spec["replicas"] == 3, "3 replicas")
check(spec["serviceName"] == "tern-headless", "serviceName tern-headless")
check(spec["podManagementPolicy"] == "Parallel", "podManagementPolicy Parallel")
check(pod.get("enableServiceLinks") is False, "enableServiceLinks false")
check(env.get("TERN_CLUSTER__ENABLED") == "true", "clustering on")
check("TERN_CLUSTER__NODE_ID" not in env, "node id left to the host name")
check(env.get("TERN_CLUSTER__LEAVE_ON_SHUTDOWN") == "false", "leave_on_shutdown false")
check(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness /readyz")
check(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness /healthz")
ports = {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}
check(ports == {"mqtt": (1883, "TCP"), "http": (9090, "TCP"), "cluster": (7946, "UDP")}, f"ports {ports}")
check("preStop" in c.get("lifecycle", {}), "preStop hook")
grace = int(env.get("TERN_NODE__SHUTDOWN_GRACE_SECS", "10"))
check(pod["terminationGracePeriodSeconds"] > grace + 5 + 10, "terminationGracePeriodSeconds > shutdown grace + preStop + handover drain")
ann = spec["template"]["metadata"].get("annotations", {})
check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9090"
      and ann.get("prometheus.io/path") == "/metrics", "Prometheus scrape annotations")
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
check(mounts.get("/data") in [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]], "/data from a volumeClaimTemplate")
secret_vols = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
check(mounts.get("/etc/tern/certs") in secret_vols, "certificates from a Secret at /etc/tern/certs")
check("resources" in c and c["resources"].get("requests"), "resources set")

svcs = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
hl = svcs.get("tern-headless", {}).get("spec", {})
check(hl.get("clusterIP") == "None" and hl.get("publishNotReadyAddresses") is True, "headless Service, not-ready addresses published")
check(any(p["port"] == 7946 and p["protocol"] == "UDP" for p in hl.get("ports", [])), "headless Service has UDP 7946")
check(any(p["port"] == 1883 for p in svcs.get("tern", {}).get("spec", {}).get("ports", [])), "client Service on 1883")
pdbs = by_kind(docs, "PodDisruptionBudget")
check(len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1, "PodDisruptionBudget maxUnavailable 1")
sel = spec["selector"]["matchLabels"]
for name, s in svcs.items():
    check(s["spec"]["selector"] == sel, f"Service {name} selects the StatefulSet's pods")
check(pdbs and pdbs[0]["spec"]["selector"]["matchLabels"] == sel, "PDB selects the StatefulSet's pods")

# The wrapper script, run for real: what configuration does `tern serve` get in each pod?
if tern_binary() is None:
    fail("tern binary not built (cargo build -p tern); cannot run the wrapper script")
else:
    for pod_name in ["tern-0", "tern-2"]:
        rc, out, err = run_wrapper(sts, pod_name, "mqtt")
        if not check(rc == 0, f"{pod_name}: wrapper + tern config show exit 0 ({err.strip()[:300]})"):
            continue
        cl = effective_cluster(out)
        n = pod_name[-1]
        check(cl["enabled"] is True, f"{pod_name}: cluster.enabled")
        check(cl["advertise"] == f"{pod_name}.tern-headless.mqtt.svc.cluster.local:7946", f"{pod_name}: advertise {cl['advertise']}")
        check(cl["tls"]["node_cert"] == f"/etc/tern/certs/node-{n}.pem"
              and cl["tls"]["node_key"] == f"/etc/tern/certs/node-{n}.key", f"{pod_name}: own certificate {cl['tls']['node_cert']}")
        check(cl["tls"]["ca_cert"] == "/etc/tern/certs/ca.pem", f"{pod_name}: CA certificate")
        want = [] if n == "0" else ["tern-0.tern-headless.mqtt.svc.cluster.local:7946"]
        check(cl["seeds"] == want, f"{pod_name}: seeds {cl['seeds']} (pod 0 bootstraps with none)")
        check(cl.get("node_id") is None, f"{pod_name}: node_id unset (taken from the host name)")

finish("check_manifests")
