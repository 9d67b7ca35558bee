"""Offline checks of the deployment manifests (run by deploy/check.sh after rendering them).
Each RENDER_DIR/*.yaml is one install: what `kubectl apply -k` of some kustomizations or one
`helm template` of the chart with one values file creates. Both render paths get the same checks:

1. every rendered Kubernetes object validates against the Kubernetes schemas
   (kubernetes-validate), KEDA objects against KEDA's own CRD schemas (deploy/schemas/keda);
2. the manifests agree with the binaries: every env var they set is one the gateway or worker
   reads (from `--help`, i.e. the clap definitions), probes, Services, NetworkPolicies and
   scrape annotations use the ports the binaries listen on, grace periods outlast the binaries'
   drain, credentials come only from Secrets, the ScaledObject's topic, group, brokers, reset
   policy and max replicas are the worker's and KEDA uses the workers' Kafka Secret, and a
   `helm test` Pod asks the gateway Service for /readyz;
3. every metric an alert or dashboard uses is one the binaries export, and every rendered
   PrometheusRule says what monitoring/alerts.yml says.

usage: validate.py RENDER_DIR GATEWAY_BIN WORKER_BIN
"""
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.31"
ROOT = Path(__file__).resolve().parent.parent
render, gateway_bin, worker_bin = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
failures = []


def fail(message):
    failures.append(message)


installs = {path.name: [d for d in yaml.safe_load_all(path.read_text()) if d]
            for path in sorted(render.glob("*.yaml"))}
if not installs:
    sys.exit(f"validate.py: nothing rendered in {render}")


def settings(binary):
    """{ENV: default} from a binary's --help (clap prints `[env: NAME=]` and `[default: X]`)."""
    text = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
    result = {}
    for block in re.split(r"\n(?=\s+-)", text):
        env = re.search(r"\[env: ([A-Z0-9_]+)[=\]]", block)
        if env:
            default = re.search(r"\[default: ([^\]]*)\]", block)
            result[env.group(1)] = default.group(1) if default else None
    return result


def seconds(duration):
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    if not match:
        raise ValueError(f"cannot read duration {duration!r}")
    value, unit = int(match.group(1)), match.group(2)
    return value / 1000 if unit == "ms" else value * (60 if unit == "m" else 1)


# 1. Schemas -------------------------------------------------------------------------------
keda_schemas = {}
for crd_file in (ROOT / "deploy/schemas/keda").glob("*.yaml"):
    crd = yaml.safe_load(crd_file.read_text())
    for version in crd["spec"]["versions"]:
        keda_schemas[(crd["spec"]["names"]["kind"], f'{crd["spec"]["group"]}/{version["name"]}')] = \
            version["schema"]["openAPIV3Schema"]


def unknown_fields(value, schema, path):
    """Fields a structural schema would silently prune: almost always a typo."""
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            for key in value:
                if key not in props and not schema.get("additionalProperties"):
                    yield f"{path}.{key}"
        for key, item in value.items():
            sub = (props or {}).get(key) or (schema.get("additionalProperties") if isinstance(schema.get("additionalProperties"), dict) else None)
            if sub:
                yield from unknown_fields(item, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{i}]")


def validate_keda(document, source):
    schema = keda_schemas.get((document["kind"], document["apiVersion"]))
    if schema is None:
        fail(f"{source}: no KEDA schema for {document['kind']} {document['apiVersion']}")
        return
    for error in jsonschema.Draft7Validator(schema).iter_errors(document):
        fail(f"{source}: {document['kind']}/{document['metadata']['name']}: {error.message} at {list(error.path)}")
    for field in unknown_fields(document, schema, document["kind"]):
        fail(f"{source}: unknown field {field} (KEDA would drop it)")


operator_kinds = {"ServiceMonitor", "PrometheusRule"}
for name, objects in installs.items():
    for document in objects:
        kind = document["kind"]
        if document["apiVersion"].startswith("keda.sh/"):
            validate_keda(document, name)
        elif kind in operator_kinds:
            continue  # checked below against the rules file; no schema offline
        else:
            try:
                kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                fail(f"{name}: {kind}/{document['metadata']['name']}: {error.message} at {list(error.path)}")
for document in yaml.safe_load_all((ROOT / "keda/base/triggerauthentication.yaml").read_text()):
    validate_keda(document, "keda/base/triggerauthentication.yaml")

# 2. Manifests agree with the binaries ------------------------------------------------------
known = {"gateway": settings(gateway_bin), "worker": settings(worker_bin)}
KEDA_KAFKA_METADATA = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
    "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions", "partitionLimitation",
    "version", "sasl", "tls", "unsafeSsl",
}


CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|MONGO_URI$|PRIVATE")


def secrets_read(pod, container):
    """Names of the Secrets a container reads: env, envFrom and mounted volumes."""
    names = {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    names |= {i["valueFrom"]["secretKeyRef"]["name"] for i in container.get("env", [])
              if "secretKeyRef" in i.get("valueFrom", {})}
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    names |= {v["secret"]["secretName"] for v in pod.get("volumes", [])
              if "secret" in v and v["name"] in mounted}
    return names


def worker_env_set(deployment):
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")
    return {i["name"] for i in container.get("env", [])}


def check_credentials(app_file, binary, pod, container, configs):
    """Credentials come from Secrets (env or mounted file), never from a ConfigMap or a literal."""
    for config in configs:
        for key in config.get("data") or {}:
            if CREDENTIAL.search(key) and not key.endswith("_FILE"):
                fail(f"{app_file}: ConfigMap {config['metadata']['name']} holds {key}: credentials belong in a Secret")
    secret_mounts = {m["mountPath"] for m in container.get("volumeMounts", [])
                     if any(v["name"] == m["name"] and "secret" in v for v in pod.get("volumes", []))}
    for item in container.get("env", []):
        name = item["name"]
        if CREDENTIAL.search(name) and not name.endswith("_FILE") and "value" in item:
            fail(f"{app_file}: {binary} sets {name} as a literal: take it from a Secret")
        if name.endswith("_FILE") and "value" in item and (CREDENTIAL.search(name) or re.search(r"CA_FILE|KEY_FILE", name)):
            if not any(item["value"].startswith(m.rstrip("/") + "/") for m in secret_mounts):
                fail(f"{app_file}: {binary} {name}={item['value']} is not in a mounted Secret")


def check_helm_tests(app_file, objects, services):
    """A `helm test` Pod asks the gateway Service, on the Service's port, for /readyz."""
    for pod in objects:
        if pod["kind"] != "Pod" or pod["metadata"].get("annotations", {}).get("helm.sh/hook") != "test":
            continue
        port = services["gateway"]["spec"]["ports"][0]["port"]
        expected = f"http://gateway.{pod['metadata']['namespace']}.svc:{port}/readyz"
        if expected not in pod["spec"]["containers"][0].get("command", []):
            fail(f"{app_file}: test Pod {pod['metadata']['name']} does not ask {expected}")


def check_ports(app_file, binary, container, port, objects):
    """Services and NetworkPolicies in front of a binary use the port it listens on."""
    targets = {port} | {p.get("name") for p in container.get("ports", []) if p["containerPort"] == port}
    for o in objects:
        spec = o.get("spec", {})
        if o["kind"] == "Service" and spec.get("selector", {}).get("app.kubernetes.io/name") == binary:
            for p in spec["ports"]:
                if p["targetPort"] not in targets:
                    fail(f"{app_file}: Service {o['metadata']['name']} targets {p['targetPort']}, {binary} listens on {port}")
        if o["kind"] == "NetworkPolicy" and spec["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name") == binary:
            for rule in spec.get("ingress", []):
                for p in rule.get("ports", []):
                    if p["port"] != port:
                        fail(f"{app_file}: NetworkPolicy {o['metadata']['name']} opens {p['port']}, {binary} listens on {port}")


def check_install(app_file, objects):
    by_kind = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o["metadata"]["name"]] = o
    configs = list(by_kind.get("ConfigMap", {}).values())
    secrets = list(by_kind.get("Secret", {}).values())
    deployments = by_kind.get("Deployment", {})
    for binary in ("gateway", "worker"):
        deployment = deployments.get(binary)
        if deployment is None:
            fail(f"{app_file}: no Deployment named {binary}")
            continue
        pod = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == binary)
        if container.get("command") != [f"/usr/local/bin/{binary}"]:
            fail(f"{app_file}: {binary} runs {container.get('command')}, the image has /usr/local/bin/{binary}")
        env = {}
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef") or source.get("secretRef")
            pool = configs if "configMapRef" in source else secrets
            match = next((o for o in pool if o["metadata"]["name"] == ref["name"]), None)
            if match is None and "configMapRef" in source:
                fail(f"{app_file}: {binary} reads ConfigMap {ref['name']} which is not rendered")
            if match:
                env.update(match.get("data") or {})
                env.update(match.get("stringData") or {})
        for item in container.get("env", []):
            env[item["name"]] = item.get("value")
        # Every variable set for the app must be one some binary reads (a typo is a silent default).
        union = set(known["gateway"]) | set(known["worker"])
        for key in env:
            if key not in union:
                fail(f"{app_file}: {binary} gets {key}, which neither binary reads")
        settings_of = dict(known[binary])
        settings_of.update({k: v for k, v in env.items() if k in known[binary]})
        listen = settings_of["GATEWAY_LISTEN" if binary == "gateway" else "WORKER_LISTEN"]
        port = int(listen.rsplit(":", 1)[1])
        ports = {p["containerPort"] for p in container.get("ports", [])}
        if ports != {port}:
            fail(f"{app_file}: {binary} containerPort {ports}, binary listens on {port}")
        check_ports(app_file, binary, container, port, objects)
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container.get(probe, {}).get("httpGet", {})
            if get.get("port") != port or get.get("path") != path:
                fail(f"{app_file}: {binary} {probe} is {get}, expected {path} on {port}")
        annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/port") != str(port):
            fail(f"{app_file}: {binary} scrape port {annotations.get('prometheus.io/port')} != {port}")
        grace_key = "GATEWAY_SHUTDOWN_GRACE" if binary == "gateway" else "WORKER_SHUTDOWN_GRACE"
        if pod.get("terminationGracePeriodSeconds", 30) <= seconds(settings_of[grace_key]):
            fail(f"{app_file}: {binary} terminationGracePeriodSeconds must exceed {grace_key}={settings_of[grace_key]}")
        if "MONGO_URI" not in env and not any("secretRef" in s for s in container.get("envFrom", [])):
            fail(f"{app_file}: {binary} gets no MONGO_URI")
        check_credentials(app_file, binary, pod, container, configs)
        if binary == "worker":
            worker_env = settings_of
            worker_secrets = secrets_read(pod, container)
    check_helm_tests(app_file, objects, by_kind.get("Service", {}))
    # The ScaledObject, if any (without KEDA the worker count is fixed), scales this worker
    # on this group and topic.
    scaled = [o for o in objects if o["kind"] == "ScaledObject"]
    if not scaled:
        return
    if len(scaled) != 1:
        fail(f"{app_file}: expected one ScaledObject")
        return
    so = scaled[0]
    if so["spec"]["scaleTargetRef"]["name"] not in deployments:
        fail(f"{app_file}: scales {so['spec']['scaleTargetRef']['name']}, not a rendered Deployment")
    trigger = so["spec"]["triggers"][0]
    meta = trigger["metadata"]
    expect = {
        "topic": worker_env["KAFKA_TOPIC"],
        "consumerGroup": worker_env["KAFKA_GROUP_ID"],
        "offsetResetPolicy": worker_env["KAFKA_OFFSET_RESET"],
    }
    for key, value in expect.items():
        if meta.get(key) != value:
            fail(f"{app_file}: trigger {key}={meta.get(key)!r}, the worker uses {value!r}")
    brokers = worker_env["KAFKA_BROKERS"]
    # KEDA runs in another namespace: a short in-namespace service name must be qualified.
    qualified = {b if b.count(".") >= 2 else b.replace(":", f".{so['metadata']['namespace']}.svc:", 1)
                 for b in brokers.split(",")}
    if set(meta.get("bootstrapServers", "").split(",")) != qualified:
        fail(f"{app_file}: bootstrapServers {meta.get('bootstrapServers')!r}, the worker uses {brokers!r}")
    if so["spec"]["maxReplicaCount"] != int(worker_env["KAFKA_TOPIC_PARTITIONS"]):
        fail(f"{app_file}: maxReplicaCount {so['spec']['maxReplicaCount']} != partitions {worker_env['KAFKA_TOPIC_PARTITIONS']}")
    # KEDA measures lag with the workers' own Kafka identity and transport: the same Secret.
    needs = set()
    if "KAFKA_SASL_MECHANISM" in worker_env_set(deployments["worker"]):
        needs |= {"sasl", "username", "password"}
    if worker_env.get("KAFKA_TLS") == "true":
        needs.add("tls")
    if needs:
        ref = trigger.get("authenticationRef", {}).get("name")
        auths = {o["metadata"]["name"]: o for o in objects if o["kind"] == "TriggerAuthentication"}
        if ref not in auths:
            fail(f"{app_file}: the workers use {sorted(needs)} but the trigger has no rendered authenticationRef")
        else:
            targets = auths[ref]["spec"].get("secretTargetRef", [])
            names = {t["name"] for t in targets}
            if not names or not names <= worker_secrets:
                fail(f"{app_file}: TriggerAuthentication {ref} reads Secrets {sorted(names)}, the workers {sorted(worker_secrets)}")
            missing = needs - {t["parameter"] for t in targets}
            if missing:
                fail(f"{app_file}: TriggerAuthentication {ref} lacks {sorted(missing)}, which the workers use")
    for key in meta:
        if key not in KEDA_KAFKA_METADATA:
            fail(f"{app_file}: unknown kafka trigger field {key}")
    if not str(meta.get("lagThreshold", "")).isdigit() or int(meta["lagThreshold"]) <= 0:
        fail(f"{app_file}: lagThreshold must be a positive number, is {meta.get('lagThreshold')!r}")


for name, objects in installs.items():
    check_install(name, objects)

# 3. Metrics used by alerts and dashboards exist --------------------------------------------
source = (ROOT / "gateway/src/metrics.rs").read_text() + (ROOT / "worker/src/metrics.rs").read_text()
exported = set(re.findall(r'"((?:gateway|worker)_[a-z_]+)"', source))


def used_metrics(text):
    return set(re.findall(r"\b((?:gateway|worker)_[a-z_]+)", text))


def check_metrics(text, where):
    for metric in used_metrics(text):
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        if metric not in exported and base not in exported:
            fail(f"{where} uses {metric}, which no binary exports")


alerts_text = (ROOT / "monitoring/alerts.yml").read_text()
check_metrics(alerts_text, "monitoring/alerts.yml")
check_metrics((ROOT / "monitoring/grafana-dashboard.json").read_text(), "monitoring/grafana-dashboard.json")
json.loads((ROOT / "monitoring/grafana-dashboard.json").read_text())
rules = [(name, o) for name, objects in installs.items() for o in objects if o["kind"] == "PrometheusRule"]
if not rules:
    fail("no install renders a PrometheusRule")
for name, rule in rules:
    if rule["spec"]["groups"] != yaml.safe_load(alerts_text)["groups"]:
        fail(f"{name}: PrometheusRule {rule['metadata']['name']} differs from monitoring/alerts.yml")

if failures:
    print("\n".join(f"FAIL {f}" for f in failures))
    sys.exit(1)
print(f"{len(installs)} installs valid (Kubernetes {KUBERNETES_VERSION} schemas, KEDA CRDs) and consistent with the binaries: {', '.join(installs)}")
