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

{{- define "switchyard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
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
