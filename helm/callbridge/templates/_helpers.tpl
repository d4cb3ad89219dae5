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

{{/*
The admin Service: "<fullname>-admin", within the 63 characters of a Service name.
*/}}
{{- define "callbridge.adminServiceName" -}}
{{- printf "%s-admin" (include "callbridge.fullname" . | trunc 57 | trimSuffix "-") }}
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
{{- $config := deepCopy .Values.config }}
{{- range (include "callbridge.secretFiles" . | fromJson).files }}
{{- $node := $config }}
{{- range .table }}
{{- if not (kindIs "map" (index $node .)) }}{{ $_ := set $node . (dict) }}{{ end }}
{{- $node = index $node . }}
{{- end }}
{{- $_ := set $node .configKey (printf "%s/%s" (include "callbridge.secretsMountPath" $) .path) }}
{{- end -}}
# Rendered by the callbridge Helm chart from .Values.config; see docs/configuration.md.
# Secrets are not in this file: the *_file keys name files of the Secret mounted read-only at
# {{ include "callbridge.secretsMountPath" . }}.
{{- range $section := list "goto" "channel" "webhook" "kafka" "sequencer" "sequencer_io" "admin" "log" "shutdown" }}
{{- with (index $config $section) }}

[{{ $section }}]
{{- include "callbridge.tomlTable" (dict "prefix" $section "table" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Secrets reach the bridge as files: the Secret (chart-made or existingSecret) is mounted
read-only at callbridge.secretsMountPath, and the rendered config.toml points each `*_file` key
at its file. Only the keys this deployment uses are mounted (items:), and each must be in the
Secret (the kubelet refuses the mount otherwise, naming the key): the bridge fails at start-up on
a `*_file` naming a missing file, so a key that may be absent is never pointed at. A `*_file`
key the user set in config.* wins: that secret is then not taken from the Secret.
*/}}
{{- define "callbridge.secretsMountPath" -}}
/etc/callbridge/secrets
{{- end }}

{{/*
Which GoTo token the bridge uses: "pat" or "refresh". The bridge prefers a personal access
token when it has both. The chart-made Secret shows it; existingSecret cannot be read at render
time, so existingSecretContents.gotoToken says (empty: refreshToken when
config.goto.refresh_token_file is set, else personalAccessToken).
*/}}
{{- define "callbridge.gotoToken" -}}
{{- $g := .Values.config.goto }}
{{- $said := toString (dig "gotoToken" "" (default (dict) .Values.existingSecretContents)) }}
{{- if $g.personal_access_token_file }}pat
{{- else if .Values.existingSecret }}
{{- if eq $said "personalAccessToken" }}pat
{{- else if eq $said "refreshToken" }}refresh
{{- else if $g.refresh_token_file }}refresh
{{- else }}pat
{{- end }}
{{- else if .Values.secrets.gotoPersonalAccessToken }}pat
{{- else }}refresh
{{- end }}
{{- end }}

{{/*
The Secret's keys this deployment reads, as JSON {"files": [...]}: each with the config table
(list of keys), the `*_file` key, the Secret key and the file name under the mount.
*/}}
{{- define "callbridge.secretFiles" -}}
{{- $c := .Values.config }}
{{- $g := $c.goto }}
{{- $w := default (dict) $c.webhook }}
{{- $kafka := default (dict) $c.kafka }}
{{- $sasl := default (dict) $kafka.sasl }}
{{- $tls := default (dict) $kafka.tls }}
{{- $k := .Values.secretKeys }}
{{- $s := .Values.secrets }}
{{- $token := include "callbridge.gotoToken" . }}
{{- $files := list }}
{{- if not $g.client_secret_file }}
{{- $files = append $files (dict "table" (list "goto") "configKey" "client_secret_file" "secretKey" $k.gotoClientSecret "path" "goto-client-secret") }}
{{- end }}
{{- if and (eq $token "pat") (not $g.personal_access_token_file) }}
{{- $files = append $files (dict "table" (list "goto") "configKey" "personal_access_token_file" "secretKey" $k.gotoPersonalAccessToken "path" "goto-personal-access-token") }}
{{- end }}
{{- if and (eq $token "refresh") (not $g.refresh_token_file) }}
{{- $files = append $files (dict "table" (list "goto") "configKey" "refresh_token_file" "secretKey" $k.gotoRefreshToken "path" "goto-refresh-token") }}
{{- end }}
{{- if and (include "callbridge.isWebhook" .) (not $w.secret_file) }}
{{- $files = append $files (dict "table" (list "webhook") "configKey" "secret_file" "secretKey" $k.webhookSecret "path" "webhook-secret") }}
{{- end }}
{{- if and (include "callbridge.usesSasl" .) (not $sasl.password_file) }}
{{- $files = append $files (dict "table" (list "kafka" "sasl") "configKey" "password_file" "secretKey" $k.kafkaSaslPassword "path" "kafka-sasl-password") }}
{{- end }}
{{- $tlsPassword := $s.kafkaTlsKeyPassword }}
{{- if .Values.existingSecret }}
{{- $tlsPassword = dig "kafkaTlsKeyPassword" false (default (dict) .Values.existingSecretContents) }}
{{- end }}
{{- if and $tlsPassword (not $tls.key_password_file) }}
{{- $files = append $files (dict "table" (list "kafka" "tls") "configKey" "key_password_file" "secretKey" $k.kafkaTlsKeyPassword "path" "kafka-tls-key-password") }}
{{- end }}
{{- toJson (dict "files" $files) }}
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
{{- $timeout := "25s" }}
{{- with .Values.config.shutdown }}
{{- if not (kindIs "invalid" .timeout) }}{{ $timeout = toString .timeout }}{{ end }}
{{- end }}
{{- $ms := include "callbridge.durationMs" $timeout }}
{{- if eq $ms "invalid" }}
{{- fail (printf "config.shutdown.timeout (%s) is not a duration the chart can read: use whole or decimal numbers with units, e.g. 25s, 1m30s, 90000ms" $timeout) }}
{{- end }}
{{- if ge (float64 $ms) (mulf (int $.Values.terminationGracePeriodSeconds) 1000) }}
{{- fail (printf "config.shutdown.timeout (%s) must stay below terminationGracePeriodSeconds (%d): Kubernetes kills the pod at the grace period" $timeout (int $.Values.terminationGracePeriodSeconds)) }}
{{- end }}
{{- include "callbridge.validateRefreshToken" . }}
{{- $uid := dig "runAsUser" (dig "runAsUser" 0 (default (dict) .Values.podSecurityContext)) (default (dict) .Values.securityContext) }}
{{- if and (not (dig "fsGroup" nil (default (dict) .Values.podSecurityContext))) $uid (ne (int64 $uid) 0) }}
{{- fail "podSecurityContext.fsGroup is required when the bridge runs as a non-root uid: the Secret's files are mounted root-owned with mode 0440, readable through the fsGroup the kubelet gives them" }}
{{- end }}
{{- if and .Values.kafkaTls.enabled (not .Values.kafkaTls.secretName) }}
{{- fail "kafkaTls.secretName is required when kafkaTls.enabled is true" }}
{{- end }}
{{- end }}

{{/*
A refresh token shared by several pods: GoTo issues a new refresh token when the old one expires
and retires the old one, so only the replica that refreshed (and any replica reading the same
goto.refresh_token_file) keeps a token GoTo accepts. The chart points goto.refresh_token_file at
the read-only Secret mount, where the bridge cannot write the new token (it keeps it in memory),
and its only writable volume (/tmp) is per pod, so more than one replica (or an autoscaler) with
a refresh token breaks at the first rotation, unless config.goto.refresh_token_file is on a
volume the replicas share and can write, mounted through extraVolumes / extraVolumeMounts. (With
existingSecret, existingSecretContents.gotoToken says which token the Secret holds.)
*/}}
{{- define "callbridge.validateRefreshToken" -}}
{{- $g := .Values.config.goto }}
{{- $refresh := eq (include "callbridge.gotoToken" .) "refresh" }}
{{- $several := or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- if and $refresh $several }}
{{- $file := toString (default "" $g.refresh_token_file) }}
{{- $shared := false }}
{{- range .Values.extraVolumeMounts }}
{{- $dir := trimSuffix "/" (toString .mountPath) }}
{{- if and $file (hasPrefix (printf "%s/" $dir) $file) (not .readOnly) }}{{ $shared = true }}{{ end }}
{{- end }}
{{- if not $shared }}
{{- fail "a GoTo refresh token cannot be shared by several replicas (replicaCount > 1 or autoscaling.enabled): GoTo retires a refresh token when it issues the next one, so every replica but the one that refreshed is locked out. Use a personal access token (secrets.gotoPersonalAccessToken), or one replica, or put config.goto.refresh_token_file on a volume all replicas share and can write (extraVolumes + a writable extraVolumeMounts entry whose mountPath contains the file, e.g. a ReadWriteMany PVC seeded with the token)" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A duration as the bridge reads it (humantime: "25s", "1m30s", "90000ms", "1.5s", "2 min"), in
milliseconds as a decimal string; "invalid" when the chart cannot read it. Units are tried longest
first, so "1ms" is not read as a minute and "1month" not as "1m".
*/}}
{{- define "callbridge.durationMs" -}}
{{- $t := trim (toString .) }}
{{- $ms := dict "nanos" 0.000001 "nsec" 0.000001 "ns" 0.000001 "usec" 0.001 "us" 0.001 "µs" 0.001 "millis" 1 "msec" 1 "ms" 1 "seconds" 1000 "second" 1000 "secs" 1000 "sec" 1000 "s" 1000 "minutes" 60000 "minute" 60000 "mins" 60000 "min" 60000 "m" 60000 "hours" 3600000 "hour" 3600000 "hrs" 3600000 "hr" 3600000 "h" 3600000 "days" 86400000 "day" 86400000 "d" 86400000 "weeks" 604800000 "week" 604800000 "wks" 604800000 "wk" 604800000 "w" 604800000 "months" 2630016000 "month" 2630016000 "M" 2630016000 "years" 31557600000 "year" 31557600000 "yrs" 31557600000 "yr" 31557600000 "y" 31557600000 }}
{{- $units := "seconds|minutes|months|millis|second|minute|month|nanos|hours|weeks|years|nsec|usec|msec|secs|mins|hour|days|week|year|sec|min|hrs|day|wks|yrs|ns|us|µs|ms|hr|wk|yr|s|m|h|d|w|M|y" }}
{{- $part := printf "[0-9]+(\\.[0-9]+)?\\s*(%s)" $units }}
{{- if and $t (regexMatch (printf "^(%s\\s*)+$" $part) $t) }}
{{- $sum := 0.0 }}
{{- range regexFindAll $part $t -1 }}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" . }}
{{- $u := regexReplaceAll "^[0-9.]+\\s*" . "" }}
{{- $sum = addf $sum (mulf (float64 $n) (index $ms $u)) }}
{{- end }}
{{- $sum }}
{{- else }}invalid{{ end }}
{{- end }}
