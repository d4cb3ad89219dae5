{{/*
Names and labels.
*/}}
{{- define "callbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "callbridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "callbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "callbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "callbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "callbridge.labels" -}}
helm.sh/chart: {{ include "callbridge.chart" . }}
{{ include "callbridge.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: bridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "callbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "callbridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "callbridge.secretName" -}}
{{- default (include "callbridge.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "callbridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "callbridge.isWebhook" -}}
{{- if eq (toString .Values.config.channel.kind) "webhook" }}true{{ end }}
{{- end }}

{{- define "callbridge.usesSasl" -}}
{{- if hasPrefix "sasl_" (toString .Values.config.kafka.security_protocol) }}true{{ end }}
{{- end }}

{{/*
Container ports come from the listen addresses in the config, so the two can never disagree.
*/}}
{{- define "callbridge.webhookContainerPort" -}}
{{- regexFind "[0-9]+$" (toString .Values.config.webhook.listen) | int }}
{{- end }}

{{- define "callbridge.adminContainerPort" -}}
{{- regexFind "[0-9]+$" (toString .Values.config.admin.listen) | int }}
{{- end }}

{{/*
A minimal TOML writer. Helm's toToml prints every number as a float (10 -> 10.0), which the
bridge refuses for integer keys, so scalars are formatted here: whole numbers as integers,
strings and lists as JSON (valid TOML for strings and arrays of scalars), nulls omitted so the
bridge's own default applies. A table prints its scalars first, then its sub-tables, as TOML
requires.
*/}}
{{- define "callbridge.tomlKey" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "callbridge.tomlScalar" -}}
{{- $k := kindOf . }}
{{- if or (eq $k "float64") (eq $k "float32") }}
{{- if eq (float64 .) (floor .) }}{{ printf "%d" (int64 .) }}{{ else }}{{ . }}{{ end }}
{{- else if or (eq $k "bool") (hasPrefix "int" $k) (hasPrefix "uint" $k) }}
{{- . }}
{{- else if eq $k "slice" }}
{{- $items := list }}
{{- range . }}{{ $items = append $items (include "callbridge.tomlScalar" .) }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else }}
{{- toString . | toJson }}
{{- end }}
{{- end }}

{{- define "callbridge.tomlTable" -}}
{{- $prefix := .prefix }}
{{- range $k, $v := .table }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) }}
{{ include "callbridge.tomlKey" $k }} = {{ include "callbridge.tomlScalar" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $name := printf "%s.%s" $prefix (include "callbridge.tomlKey" $k) }}

[{{ $name }}]
{{- include "callbridge.tomlTable" (dict "prefix" $name "table" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "callbridge.configToml" -}}
# Rendered by the callbridge Helm chart from .Values.config; see docs/configuration.md.
# Secrets are not in this file: they come from CALLBRIDGE_* environment variables.
{{- range $section := list "goto" "channel" "webhook" "kafka" "sequencer" "sequencer_io" "admin" "log" "shutdown" }}
{{- with (index $.Values.config $section) }}

[{{ $section }}]
{{- include "callbridge.tomlTable" (dict "prefix" $section "table" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Render-time checks the JSON schema cannot express.
*/}}
{{- define "callbridge.validate" -}}
{{- $kind := toString .Values.config.channel.kind }}
{{- if not .Values.config.goto.client_id }}
{{- fail "config.goto.client_id is required: the OAuth client id from developer.goto.com" }}
{{- end }}
{{- if not .Values.config.goto.account_keys }}
{{- fail "config.goto.account_keys needs at least one account key (decimal string)" }}
{{- end }}
{{- if eq $kind "webhook" }}
{{- if not .Values.config.webhook.public_url }}
{{- fail "config.webhook.public_url is required when config.channel.kind is webhook: the https URL GoTo can reach, without the secret" }}
{{- end }}
{{- if eq (include "callbridge.webhookContainerPort" .) (include "callbridge.adminContainerPort" .) }}
{{- fail "config.webhook.listen and config.admin.listen must use different ports" }}
{{- end }}
{{- else }}
{{- if .Values.ingress.enabled }}
{{- fail "ingress.enabled needs config.channel.kind webhook: in websocket mode nothing comes in from GoTo" }}
{{- end }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- $s := .Values.secrets }}
{{- if not $s.gotoClientSecret }}
{{- fail "secrets.gotoClientSecret is required (or set existingSecret)" }}
{{- end }}
{{- if not (or $s.gotoPersonalAccessToken $s.gotoRefreshToken) }}
{{- fail "secrets.gotoPersonalAccessToken or secrets.gotoRefreshToken is required (or set existingSecret)" }}
{{- end }}
{{- if and (eq $kind "webhook") (lt (len (toString $s.webhookSecret)) 32) }}
{{- fail "secrets.webhookSecret must be at least 32 random characters in webhook mode, e.g. `openssl rand -hex 32` (or set existingSecret)" }}
{{- end }}
{{- if and (include "callbridge.usesSasl" .) (not $s.kafkaSaslPassword) }}
{{- fail "secrets.kafkaSaslPassword is required with config.kafka.security_protocol sasl_* (or set existingSecret)" }}
{{- end }}
{{- end }}
{{- with .Values.config.shutdown }}
{{- $t := toString .timeout }}
{{- $secs := -1 }}
{{- if regexMatch "^[0-9]+s$" $t }}{{ $secs = trimSuffix "s" $t | int }}{{ end }}
{{- if regexMatch "^[0-9]+m$" $t }}{{ $secs = mul (trimSuffix "m" $t | int) 60 }}{{ end }}
{{- if ge $secs (int $.Values.terminationGracePeriodSeconds) }}
{{- fail (printf "config.shutdown.timeout (%s) must stay below terminationGracePeriodSeconds (%d): Kubernetes kills the pod at the grace period" $t (int $.Values.terminationGracePeriodSeconds)) }}
{{- end }}
{{- end }}
{{- if and .Values.kafkaTls.enabled (not .Values.kafkaTls.secretName) }}
{{- fail "kafkaTls.secretName is required when kafkaTls.enabled is true" }}
{{- end }}
{{- end }}
