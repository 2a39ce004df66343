"""Helpers shared by the deployment checks (run by tests/tests/deploy_manifests.rs)."""

import os
import re
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The Kubernetes version whose schemas the manifests must satisfy (kubernetes-validate
# ships them, so this works offline).
K8S_VERSION = "1.31"

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL {msg}", flush=True)


def ok(msg):
    print(f"ok   {msg}", flush=True)


def check(cond, msg):
    if cond:
        ok(msg)
    else:
        fail(msg)
    return cond


def finish(name):
    if failures:
        print(f"{name}: {len(failures)} failure(s)", flush=True)
        sys.exit(1)
    print(f"{name}: all checks passed", flush=True)


def validate_k8s(doc, where):
    """Strict schema validation (unknown fields rejected) of one Kubernetes object."""
    what = f"{where}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        fail(f"{what}: no Kubernetes schema for {doc.get('apiVersion')} {doc.get('kind')}")
        return False
    except kubernetes_validate.ValidationError as e:
        fail(f"{what}: {str(e).splitlines()[0]}")
        return False
    ok(f"{what} valid against Kubernetes {K8S_VERSION} schemas")
    return True


def load_docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def expand_k8s_env(env_list, fields):
    """Resolves a container's env as the kubelet does: downward API fields from `fields`,
    $(VAR) references to variables defined earlier in the list."""
    env = {}
    for e in env_list:
        if "valueFrom" in e:
            env[e["name"]] = fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[e["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: env.get(m.group(1), m.group(0)),
                e.get("value", ""),
            )
    return env


def tern_binary():
    path = os.environ.get("TERN_BINARY") or os.path.join(ROOT, "target", "debug", "tern")
    return path if os.path.exists(path) else None


def run_wrapper(statefulset, pod_name, namespace):
    """Runs the StatefulSet's container command (the shell wrapper) as pod `pod_name`
    would, with `tern` on PATH replaced by a shim that runs the real binary's
    `tern config show` instead of `tern serve`. Returns (exit code, stdout, stderr)."""
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    env = expand_k8s_env(
        container.get("env", []),
        {"metadata.name": pod_name, "metadata.namespace": namespace},
    )
    env["HOSTNAME"] = pod_name
    env["PATH"] = "/usr/bin:/bin"
    with tempfile.TemporaryDirectory() as shim_dir:
        shim = os.path.join(shim_dir, "tern")
        with open(shim, "w") as f:
            f.write(f'#!/bin/sh\n[ "$1" = serve ] || exit 97\nexec "{tern_binary()}" config show\n')
        os.chmod(shim, 0o755)
        env["PATH"] = f"{shim_dir}:{env['PATH']}"
        p = subprocess.run(container["command"], env=env, capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def effective_cluster(config_toml):
    import tomllib

    return tomllib.loads(config_toml)["cluster"]
