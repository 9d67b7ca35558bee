"""The Helm chart and the kustomizations describe one application: the objects both render
must say the same (run by deploy/check.sh on pairs of renders, e.g. the chart with monitoring
on against k8s/base + keda/base + k8s/monitoring).

usage: compare.py CHART_RENDER KUSTOMIZE_RENDER [KIND/NAME ...]

KIND/NAME lists the objects only the kustomize render is expected to have (its Namespace, the
local overlay's in-cluster Kafka and MongoDB); any other object that one side renders and the
other does not fails, so a chart that forgets an object cannot pass by having fewer to compare.

Objects are matched by kind and name and compared whole, field by field (Deployments down to
every container's ports, env, envFrom, probes, resources, volumes and security contexts; the
ScaledObject's triggers and behaviour; ConfigMap data; NetworkPolicy rules; PrometheusRule
groups), after removing only what describes the tool that rendered them, not the workload:
- the labels Helm puts on a release's objects (helm.sh/chart, app.kubernetes.io/managed-by,
  /instance, /version), in metadata and pod templates; selectors are compared as they are;
- the pod template annotation checksum/config, with which the chart rolls the pods when its
  ConfigMap changes;
- checkov.io/skip* annotations: directives to checkov, whose reasons name each tool's way of
  pinning the image;
- empty lists and maps, which Kubernetes reads as absent (kustomize leaves `env: []` where a
  patch deleted every entry);
- `helm test` hooks, which exist only in the chart and are not installed with the release.
"""
import re
import sys
from pathlib import Path

import yaml

HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance",
               "app.kubernetes.io/version"}
TOOL_ANNOTATION = re.compile(r"checkov\.io/skip\d+|checksum/config")


def normalize(value, key=None):
    if isinstance(value, dict):
        result = {}
        for k, v in value.items():
            if (key == "labels" and k in HELM_LABELS) or (key == "annotations" and TOOL_ANNOTATION.fullmatch(k)):
                continue
            v = normalize(v, k)
            if v not in ({}, []):
                result[k] = v
        return result
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def objects(path):
    result = {}
    for o in yaml.safe_load_all(Path(path).read_text()):
        if o and "helm.sh/hook" not in o["metadata"].get("annotations", {}):
            result[f"{o['kind']}/{o['metadata']['name']}"] = normalize(o)
    return result


def differences(chart, kustomize, path=""):
    if isinstance(chart, dict) and isinstance(kustomize, dict):
        for key in sorted(set(chart) | set(kustomize)):
            yield from differences(chart.get(key), kustomize.get(key), f"{path}.{key}")
    elif isinstance(chart, list) and isinstance(kustomize, list) and len(chart) == len(kustomize):
        for i, (a, b) in enumerate(zip(chart, kustomize)):
            yield from differences(a, b, f"{path}[{i}]")
    elif chart != kustomize:
        yield f"{path}: chart has {chart!r}, kustomize {kustomize!r}"


chart_file, kustomize_file, *kustomize_only = sys.argv[1:]
chart, kustomize = objects(chart_file), objects(kustomize_file)
failures = [f"{name} is rendered by the chart only" for name in chart if name not in kustomize]
failures += [f"{name} is rendered by kustomize only" for name in kustomize
             if name not in chart and name not in kustomize_only]
failures += [f"{name} was expected in kustomize only" for name in kustomize_only
             if name in chart or name not in kustomize]
both = sorted(chart.keys() & kustomize.keys())
failures += [f"{name}{d}" for name in both for d in differences(chart[name], kustomize[name])]
pair = f"{Path(chart_file).name} and {Path(kustomize_file).name}"
if failures:
    print("\n".join(f"FAIL {pair}: {f}" for f in failures))
    sys.exit(1)
print(f"{pair} agree on {len(both)} objects" + (f" (kustomize only: {', '.join(kustomize_only)})" if kustomize_only else ""))
