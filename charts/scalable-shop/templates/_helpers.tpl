{{/*
Objects keep the names of k8s/base (gateway, worker, scalable-shop-config, ...): the alerts,
the dashboard and the README refer to them, and KEDA names its HPA keda-hpa-worker. One
release per namespace.
*/}}

{{/* Labels of every object: kustomize's part-of label plus Helm's own. */}}
{{- define "scalable-shop.labels" -}}
app.kubernetes.io/part-of: scalable-shop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The metadata of a namespaced object: (list $ name component), component may be "". */}}
{{- define "scalable-shop.metadata" -}}
{{- $root := index . 0 -}}
name: {{ index . 1 }}
namespace: {{ $root.Release.Namespace }}
labels:
  {{- with index . 2 }}
  app.kubernetes.io/name: {{ . }}
  {{- end }}
  {{- include "scalable-shop.labels" $root | nindent 2 }}
{{- end }}

{{- define "scalable-shop.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Pods run non-root, read-only, without privilege escalation (Pod Security "restricted"). */}}
{{- define "scalable-shop.podSecurityContext" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- end }}

{{- define "scalable-shop.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: ["ALL"]
{{- end }}

{{/* Does a pod mount the Kafka credentials Secret (the SASL password or the CA)? */}}
{{- define "scalable-shop.kafkaMounts" -}}
{{- if or .Values.kafka.sasl.enabled (and .Values.kafka.tls.enabled .Values.kafka.tls.caFromSecret) }}true{{ end -}}
{{- end }}

{{/*
The Kafka identity, shared by the gateway and the workers: mechanism and user from the
credentials Secret, password and CA as files mounted from it. KEDA's TriggerAuthentication
reads the same Secret.
*/}}
{{- define "scalable-shop.kafkaEnv" -}}
{{- $secret := .Values.kafka.credentialsSecret -}}
{{- if .Values.kafka.sasl.enabled }}
- name: KAFKA_SASL_MECHANISM
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: sasl
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: username
- name: KAFKA_SASL_PASSWORD_FILE
  value: /etc/scalable-shop/kafka/password
{{- end }}
{{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caFromSecret }}
- name: KAFKA_TLS_CA_FILE
  value: /etc/scalable-shop/kafka/ca
{{- end }}
{{- end }}

{{- define "scalable-shop.kafkaVolumes" -}}
{{- if include "scalable-shop.kafkaMounts" . }}
volumes:
  - name: kafka-credentials
    secret:
      secretName: {{ .Values.kafka.credentialsSecret }}
      defaultMode: 0400
      items:
        {{- if .Values.kafka.sasl.enabled }}
        - key: password
          path: password
        {{- end }}
        {{- if and .Values.kafka.tls.enabled .Values.kafka.tls.caFromSecret }}
        - key: ca
          path: ca
        {{- end }}
{{- end }}
{{- end }}

{{- define "scalable-shop.kafkaVolumeMounts" -}}
{{- if include "scalable-shop.kafkaMounts" . }}
volumeMounts:
  - name: kafka-credentials
    mountPath: /etc/scalable-shop/kafka
    readOnly: true
{{- end }}
{{- end }}

{{/* Settings from the ConfigMap, the MongoDB URI from its Secret. */}}
{{- define "scalable-shop.envFrom" -}}
envFrom:
  - configMapRef:
      name: scalable-shop-config
  - secretRef:
      name: {{ .Values.mongo.uriSecret }}
{{- end }}

{{/* Liveness on /healthz and readiness on /readyz of a port: (list port readyFailureThreshold). */}}
{{- define "scalable-shop.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ index . 0 }}
  periodSeconds: 10
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ index . 0 }}
  periodSeconds: 5
  failureThreshold: {{ index . 1 }}
{{- end }}

{{/* Pod template annotations: the scrape target, and a roll when the ConfigMap changes. */}}
{{- define "scalable-shop.podAnnotations" -}}
{{- $root := index . 0 -}}
annotations:
  prometheus.io/scrape: "true"
  prometheus.io/port: {{ index . 1 | quote }}
  prometheus.io/path: /metrics
  checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
{{- end }}

{{/* The Deployment annotations: checkov skips with their reasons. */}}
{{- define "scalable-shop.deploymentAnnotations" -}}
annotations:
  checkov.io/skip1: "CKV_K8S_43=the image is built from this repository; set image.digest to pin it when releasing"
  checkov.io/skip2: "CKV_K8S_35=the driver reads MONGO_URI from the environment; the value comes from a Secret, never from the manifest"
  {{- if ne .Values.image.pullPolicy "Always" }}
  checkov.io/skip3: "CKV_K8S_15=image.pullPolicy is {{ .Values.image.pullPolicy }} by choice of the values (an image loaded into the node)"
  {{- end }}
{{- end }}

{{/* Where a pod runs and how it pulls its image: (list $ component-values). */}}
{{- define "scalable-shop.scheduling" -}}
{{- $component := index . 1 -}}
{{- with (index . 0).Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with $component.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $component.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
KEDA runs in its own namespace: a short in-namespace broker name (fewer than two dots, like
`kafka:9092`) is qualified with the release namespace, as deploy/validate.py expects.
*/}}
{{- define "scalable-shop.kedaBootstrapServers" -}}
{{- $servers := list -}}
{{- range splitList "," .Values.kafka.brokers -}}
{{- $broker := trim . -}}
{{- $host := regexReplaceAll ":[0-9]+$" $broker "" -}}
{{- if lt (len (splitList "." $host)) 3 -}}
{{- $broker = printf "%s.%s.svc%s" $host $.Release.Namespace (trimPrefix $host $broker) -}}
{{- end -}}
{{- $servers = append $servers $broker -}}
{{- end -}}
{{- join "," $servers -}}
{{- end }}
