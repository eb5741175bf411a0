{{/* The chart name. */}}
{{- define "switchyard.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of every object: the release name when it already contains the
chart name (`helm install switchyard charts/switchyard` gives `switchyard`),
else <release>-switchyard.
*/}}
{{- define "switchyard.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The full label set of the proxy's objects (component `proxy`). */}}
{{- define "switchyard.labels" -}}
{{ include "switchyard.componentLabels" (dict "root" . "component" "proxy") }}
{{- end }}

{{/*
The full label set with a given component: (dict "root" . "component" "admin").
Every object of the chart has it: name, instance, version, component, part-of,
managed-by, and helm.sh/chart. With "ownName" true (the hook Job and the test
Pod), the name is <chart>-<component>: the proxy's selector (name and
instance, immutable in its Deployment) must not pick those pods, or the
Services would send traffic and admin switches to them.
*/}}
{{- define "switchyard.componentLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- if .ownName }}
app.kubernetes.io/name: {{ printf "%s-%s" (include "switchyard.name" .root) .component | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- else }}
{{ include "switchyard.selectorLabels" .root }}
{{- end }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: {{ .root.Values.partOf }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* The labels of the proxy's pods: the selector, the component and part-of (no version: a chart bump alone does not roll them). */}}
{{- define "switchyard.podLabels" -}}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/component: proxy
app.kubernetes.io/part-of: {{ .Values.partOf }}
{{- end }}

{{/* The ServiceAccount of the proxy's pods (and of the hook Job and test Pod). */}}
{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "switchyard.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/* The headless admin Service as a fully qualified name with its root dot and the admin port: every replica's address. */}}
{{- define "switchyard.adminDns" -}}
{{- printf "%s-admin.%s.svc.%s.:9901" (include "switchyard.fullname" .) .Release.Namespace (.Values.clusterDomain | trimSuffix ".") -}}
{{- end }}

{{/*
[runtime] cores from the CPU limit: its ceiling, at least 1 ("500m" -> 1,
"1500m" -> 2, 2 -> 2). Empty without a CPU limit (the proxy then counts
the CPUs its cgroup allows, rounded down).
*/}}
{{- define "switchyard.cores" -}}
{{- with ((.Values.resources).limits).cpu }}
{{- $cpu := toString . }}
{{- $n := 0 }}
{{- if hasSuffix "m" $cpu }}
{{- $n = div (add (trimSuffix "m" $cpu | int) 999) 1000 }}
{{- else }}
{{- $n = ceil $cpu | int }}
{{- end }}
{{- max $n 1 }}
{{- end }}
{{- end }}

{{/* A topologySpreadConstraints entry without a labelSelector gets the proxy's selector. */}}
{{- define "switchyard.topologySpread" -}}
{{- $selector := dict "matchLabels" (include "switchyard.selectorLabels" . | fromYaml) }}
{{- range .Values.topologySpreadConstraints }}
- {{ toYaml (merge (dict) . (dict "labelSelector" $selector)) | nindent 2 | trim }}
{{- end }}
{{- end }}

{{- define "switchyard.image" -}}
{{- $tag := .Values.image.tag | default (printf "release-v%s" .Chart.AppVersion) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The Secret holding the admin token (key `token`). */}}
{{- define "switchyard.adminSecretName" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin-token" (include "switchyard.fullname" .)) }}
{{- end }}

{{/* Where the pods mount their files; proxy.toml names the others relative to its own directory. */}}
{{- define "switchyard.configDir" -}}/etc/switchyard/config{{- end }}
{{- define "switchyard.upstreamsDir" -}}/etc/switchyard/upstreams{{- end }}
{{- define "switchyard.adminDir" -}}/etc/switchyard/admin{{- end }}
{{- define "switchyard.tlsDir" -}}/etc/switchyard/tls{{- end }}

{{/* proxy.toml: static settings; its checksum rolls the pods when it changes. */}}
{{- define "switchyard.proxyToml" -}}
# proxy.toml, rendered by the switchyard chart. Static: a change rolls the
# pods (the Deployment's checksum/config annotation). Paths are relative to
# this file's directory, {{ include "switchyard.configDir" . }}.
[listen]
http = "0.0.0.0:8080"
{{- if .Values.tls.secretName }}
https = "0.0.0.0:8443"
redirect_https = {{ .Values.tls.redirectHttps }}

[tls]
# The Secret {{ .Values.tls.secretName }}, mounted as a directory (never subPath): the
# proxy watches it and serves a renewed pair to new handshakes.
cert = "../tls/tls.crt"
key = "../tls/tls.key"
{{- end }}

[admin]
# All addresses: the kubelet's probes and Prometheus reach it through the
# headless {{ include "switchyard.fullname" . }}-admin Service; POSTs need the token.
listen = "0.0.0.0:9901"
token_file = "../admin/token"
# The upstreams file is a read-only ConfigMap mount: make a switch durable
# with `helm upgrade --reuse-values --set active=...` instead.
persist = false

[upstreams]
# Its own directory mount (never subPath), so the kubelet's updates arrive.
file = "../upstreams/upstreams.toml"
reread = {{ .Values.upstreamsReread | quote }}

[headers]
expose = {{ .Values.headers.expose }}
trusted_proxies = [{{ range $i, $cidr := .Values.headers.trustedProxies }}{{ if $i }}, {{ end }}{{ $cidr | quote }}{{ end }}]

[log]
access = {{ .Values.log.access }}
{{- with include "switchyard.cores" . }}

[runtime]
# The ceiling of the container's CPU limit ({{ $.Values.resources.limits.cpu }}).
cores = {{ . }}
{{- end }}

[timeouts]
connect = {{ .Values.timeouts.connect | quote }}
request = {{ .Values.timeouts.request | quote }}
client_idle = {{ .Values.timeouts.clientIdle | quote }}
upstream_idle = {{ .Values.timeouts.upstreamIdle | quote }}
shutdown_delay = "{{ .Values.shutdown.delaySeconds }}s"
shutdown = "{{ .Values.shutdown.graceSeconds }}s"
{{- end }}

{{/* upstreams.toml: the cut-over file, watched by the proxy; no checksum, so a change never restarts a pod. */}}
{{- define "switchyard.upstreamsToml" -}}
{{- if not (hasKey .Values.pools .Values.active) }}
{{- fail (printf "active: %q is not one of the pools (%s)" .Values.active (keys .Values.pools | sortAlpha | join ", ")) }}
{{- end -}}
# upstreams.toml, rendered by the switchyard chart. The proxy watches it:
# a change applies without a restart. Cut over with
#   helm upgrade {{ .Release.Name }} <chart> --reuse-values --set active=<pool>
active = {{ .Values.active | quote }}
{{- range $name, $pool := .Values.pools }}

[pools.{{ $name }}]
{{- if $pool.endpoints }}
endpoints = [{{ range $i, $ep := $pool.endpoints }}{{ if $i }}, {{ end }}{{ $ep | quote }}{{ end }}]
{{- else }}
# The headless Service: every address is one pod.
dns = {{ include "switchyard.poolDns" (dict "pool" $pool "root" $) | quote }}
{{- end }}
{{- if hasKey $pool "minHealthy" }}
{{- if kindIs "string" $pool.minHealthy }}
min_healthy = {{ $pool.minHealthy | quote }}
{{- else }}
min_healthy = {{ $pool.minHealthy | int }}
{{- end }}
{{- end }}
{{- end }}

[discovery]
every = {{ .Values.discovery.every | quote }}

[health]
{{- with .Values.health }}
{{- if .path }}
path = {{ .path | quote }}
{{- end }}
interval = {{ .interval | quote }}
timeout = {{ .timeout | quote }}
healthy_after = {{ .healthyAfter }}
unhealthy_after = {{ .unhealthyAfter }}
eject_after = {{ .ejectAfter }}
max_ejected_percent = {{ .maxEjectedPercent }}
{{- end }}
{{- end }}

{{/* A pool's headless Service as a fully qualified name with its root dot and the port: name.namespace.svc.domain.:port */}}
{{- define "switchyard.poolDns" -}}
{{- $ns := .pool.namespace | default .root.Release.Namespace -}}
{{- printf "%s.%s.svc.%s.:%v" .pool.service $ns (.root.Values.clusterDomain | trimSuffix ".") (int .pool.port) -}}
{{- end }}
