#!/usr/bin/env bash
# Validates deploy/ against real tools:
#  - promtool (Debian's prometheus package): config, rules, rule unit tests;
#  - kubernetes-validate (PyPI, bundles the Kubernetes JSON schemas, offline):
#    every plain manifest, strictly;
#  - the Grafana dashboard is valid JSON whose panels all have queries.
# The live check (a real Prometheus scraping a real server, every dashboard
# and alert expression returning data) is tests/prometheus.rs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v promtool >/dev/null || { echo "promtool not found: apt-get install prometheus" >&2; exit 1; }
promtool check config deploy/prometheus/prometheus.yml
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

venv=.venv-deploy
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 pyyaml==6.0.4
fi
# Kustomization files and the Prometheus Operator's PodMonitor (a CRD) have
# no schema in Kubernetes' own set; the PodMonitor is checked below.
mapfile -t manifests < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml ! -name podmonitor.yaml \
  ! -path '*/overlays/*/replicas.yaml' ! -path '*/overlays/*/config.yaml' | sort)
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.31.0 "${manifests[@]}"
echo "kubernetes-validate: ${#manifests[@]} manifests valid against Kubernetes 1.31 schemas"

"$venv/bin/python" - <<'PY'
import json, yaml, sys
dash = json.load(open("deploy/grafana/dashboards/mnister.json"))
bad = [p["title"] for p in dash["panels"] if not p.get("targets") or not all(t.get("expr") for t in p["targets"])]
assert not bad, f"panels without queries: {bad}"
pm = yaml.safe_load(open("deploy/k8s/base/podmonitor.yaml"))
dep = yaml.safe_load(open("deploy/k8s/base/deployment.yaml"))
ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
assert pm["kind"] == "PodMonitor" and pm["apiVersion"] == "monitoring.coreos.com/v1"
assert pm["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"], "PodMonitor selects other pods"
for ep in pm["spec"]["podMetricsEndpoints"]:
    assert ep["port"] in ports, f"PodMonitor port {ep['port']} is not a container port {ports}"
for k in ("base", "overlays/example"):
    kz = yaml.safe_load(open(f"deploy/k8s/{k}/kustomization.yaml"))
    import os
    for r in kz.get("resources", []) + [p["path"] for p in kz.get("patches", [])]:
        assert os.path.exists(os.path.join("deploy/k8s", k, r)), f"{k}/kustomization.yaml names missing {r}"
print(f"dashboard: {len(dash['panels'])} panels with queries; PodMonitor and kustomizations consistent")

# Every MNISTER_* variable the manifests set is one the server reads (a
# renamed flag would otherwise be ignored silently), and the pod's grace
# period covers preStop plus the server's own shutdown grace.
import re
known = set(re.findall(r'env = "(MNISTER_[A-Z0-9_]+)"', open("src/config.rs").read()))
cm = yaml.safe_load(open("deploy/k8s/base/configmap.yaml"))["data"]
spec = dep["spec"]["template"]["spec"]
c0 = spec["containers"][0]
used = set(cm) | {e["name"] for e in c0.get("env", [])}
unknown = sorted(k for k in used if k.startswith("MNISTER_") and k not in known)
assert not unknown, f"the manifests set variables the server does not read: {unknown}"
secs = lambda v: float(v[:-1]) * 60 if v.endswith("m") else float(v.rstrip("s"))
pre_stop = float(c0["lifecycle"]["preStop"]["exec"]["command"][-1])
grace = secs(cm["MNISTER_SHUTDOWN_GRACE"])
assert spec["terminationGracePeriodSeconds"] > pre_stop + grace, \
    f"terminationGracePeriodSeconds {spec['terminationGracePeriodSeconds']} <= preStop {pre_stop} + shutdown grace {grace}"
assert "MNISTER_MAX_CONNECTION_AGE" in cm, "set the connection age: clients of the headless Service re-resolve only on GOAWAY"
# The tracing profile: the collector's pipelines name only components it
# defines, it forwards to the Tempo service compose runs, and Tempo listens
# where the collector sends and where Grafana's datasource reads.
col = yaml.safe_load(open("deploy/otel/collector.yaml"))
for name, pipe in col["service"]["pipelines"].items():
    for kind in ("receivers", "processors", "exporters"):
        for c in pipe.get(kind, []):
            assert c in col[kind], f"collector pipeline {name} names undefined {kind[:-1]} {c}"
compose = yaml.safe_load(open("deploy/compose.yaml"))
tempo = yaml.safe_load(open("deploy/tempo/tempo.yaml"))
assert col["exporters"]["otlp/tempo"]["endpoint"] == "tempo:4317" and "tempo" in compose["services"]
assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
ds = yaml.safe_load(open("deploy/grafana/provisioning/datasources/tempo.yml"))["datasources"][0]
assert ds["url"].endswith(f":{tempo['server']['http_listen_port']}"), "Grafana reads Tempo elsewhere"
for svc in ("otel-collector", "tempo"):
    assert compose["services"][svc]["profiles"] == ["tracing"]
print(f"manifests: {len(used)} variables the server reads; grace {spec['terminationGracePeriodSeconds']} s > preStop {pre_stop:g} s + shutdown {grace:g} s")
PY
