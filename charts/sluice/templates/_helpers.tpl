{{/* Name prefix of every object: "<release>-sluice", or the release name alone when it contains "sluice". */}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; call with (dict "root" $ "component" "controller"), component optional. */}}
{{- define "sluice.labels" -}}
{{- $root := .root -}}
{{ include "sluice.selector" (dict "root" $root "component" .component) }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sluice
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Selector labels; immutable once installed. */}}
{{- define "sluice.selector" -}}
app.kubernetes.io/name: {{ include "sluice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "sluice.tokenSecret" -}}
{{- default (printf "%s-token" (include "sluice.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* Where the token is in both pods (static: the Secret's key; tokenreview: the
     dataplane's projected ServiceAccount token), and the stream TLS files. */}}
{{- define "sluice.tokenFile" -}}/var/run/sluice/token{{- end -}}
{{- define "sluice.tlsCertFile" -}}/var/run/sluice/tls.crt{{- end -}}
{{- define "sluice.tlsKeyFile" -}}/var/run/sluice/tls.key{{- end -}}
{{- define "sluice.caFile" -}}/var/run/sluice/ca.crt{{- end -}}

{{/* The ServiceAccount whose projected tokens the controller accepts. */}}
{{- define "sluice.dataplaneServiceAccount" -}}
{{- printf "%s-dataplane" (include "sluice.fullname" .) -}}
{{- end -}}

{{/* Where the stream's certificate comes from: existing | certManager | generated. */}}
{{- define "sluice.streamTLSSource" -}}
{{- if .Values.streamTLS.existingSecret -}}existing
{{- else if .Values.streamTLS.certManager.issuerRef -}}certManager
{{- else -}}generated
{{- end -}}
{{- end -}}

{{/* The kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) of the stream. */}}
{{- define "sluice.streamTLSSecret" -}}
{{- $src := include "sluice.streamTLSSource" . -}}
{{- if eq $src "existing" -}}
{{- .Values.streamTLS.existingSecret -}}
{{- else if eq $src "certManager" -}}
{{- printf "%s-controller-tls" (include "sluice.fullname" .) -}}
{{- else -}}
{{- printf "%s-stream-tls" (include "sluice.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* DNS names of the controller Service, which its certificate must carry. */}}
{{- define "sluice.controllerDNSNames" -}}
{{- $svc := printf "%s-controller" (include "sluice.fullname" .) -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}

{{/* Data (base64) of the generated stream TLS Secret, as JSON: the existing
     Secret's when the cluster has it (lookup), so upgrades keep the
     certificate; else a new CA and a certificate for the controller Service.
     The CA key is never stored. Computed once per render (memoized in
     .Values) because the Secret and the dataplane's checksum/stream-ca
     annotation must see the same random certificate. */}}
{{- define "sluice.streamTLSData" -}}
{{- if not (hasKey .Values "__sluiceStreamTLS") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "sluice.streamTLSSecret" .) -}}
{{- $old := (and $existing $existing.data) | default dict -}}
{{- $data := dict -}}
{{- if and (index $old "ca.crt") (index $old "tls.crt") (index $old "tls.key") -}}
{{- $data = pick $old "ca.crt" "tls.crt" "tls.key" -}}
{{- else -}}
{{- $names := include "sluice.controllerDNSNames" . | fromJsonArray -}}
{{- $days := int .Values.streamTLS.validityDays -}}
{{- $ca := genCA (printf "%s-stream-ca" (include "sluice.fullname" .)) $days -}}
{{- $cert := genSignedCert (index $names 2) nil $names $days $ca -}}
{{- $data = dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) -}}
{{- end -}}
{{- $_ := set .Values "__sluiceStreamTLS" $data -}}
{{- end -}}
{{- index .Values "__sluiceStreamTLS" | toJson -}}
{{- end -}}

{{/* Values the schema cannot reject on its own. */}}
{{- define "sluice.validate" -}}
{{- if and .Values.auth.existingSecret (ne .Values.auth.mode "static") -}}
{{- fail "auth.existingSecret is a static token Secret: set auth.mode=static too (the default, tokenreview, needs no Secret)" -}}
{{- end -}}
{{- if and .Values.streamTLS.existingSecret .Values.streamTLS.certManager.issuerRef -}}
{{- fail "streamTLS.existingSecret and streamTLS.certManager.issuerRef exclude each other: pick one source of the stream certificate" -}}
{{- end -}}
{{- if and .Values.controller.podDisruptionBudget.enabled (gt (int .Values.controller.replicas) 1) -}}
{{- fail "controller.podDisruptionBudget.enabled needs controller.replicas: 1: only the leader is Ready, so with more replicas the budget would forbid evicting it and node drains would hang" -}}
{{- end -}}
{{- $m := .Values.metrics -}}
{{- if and $m.serviceMonitor.enabled $m.podMonitor.enabled -}}
{{- fail "metrics.serviceMonitor.enabled and metrics.podMonitor.enabled: enable one, or every metric is scraped twice" -}}
{{- end -}}
{{- if and $m.serviceMonitor.enabled (not .Values.dataplane.adminService.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs dataplane.adminService.enabled (the dataplanes' metrics Service); or use metrics.podMonitor" -}}
{{- end -}}
{{- $as := .Values.dataplane.autoscaling -}}
{{- if and $as.enabled (gt (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- fail (printf "dataplane.autoscaling.minReplicas (%d) is above maxReplicas (%d)" (int $as.minReplicas) (int $as.maxReplicas)) -}}
{{- end -}}
{{- if and $as.enabled (not (or $as.targetCPUUtilizationPercentage $as.targetMemoryUtilizationPercentage)) -}}
{{- fail "dataplane.autoscaling.enabled needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" -}}
{{- end -}}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion | toString) -}}
{{- end -}}

{{/* The stream URL the dataplanes follow; https when streamTLS is on, for the
     Service name the certificate carries. */}}
{{- define "sluice.controllerURL" -}}
{{- printf "%s://%s-controller.%s.svc:8090" (ternary "https" "http" .Values.streamTLS.enabled) (include "sluice.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Prometheus scrape annotations plus the user's pod annotations. */}}
{{- define "sluice.podAnnotations" -}}
{{- if .root.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}
