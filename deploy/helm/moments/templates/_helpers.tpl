{{- define "moments.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "moments.fullname" -}}
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

{{- define "moments.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moments.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "moments.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "moments.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "moments.secretName" -}}
{{- default (printf "%s-secret" (include "moments.fullname" .)) .Values.secret.existingSecret }}
{{- end }}

{{- /* The pods' stop window: the same numbers as http.shutdown_grace_secs in moments.toml.
       Call with (dict "root" $ "preStop" true|false). */ -}}
{{- define "moments.terminationGrace" -}}
{{- $v := .root.Values }}
{{- add (ternary $v.preStopSleepSeconds 0 .preStop) $v.shutdownGraceSeconds $v.terminationMarginSeconds }}
{{- end }}

{{- /* A component's pod template.
       Call with (dict "root" $ "component" "api" "args" (list ...) "values" .Values.api
                  "quic" bool "preStop" bool "env" (list of EnvVar)). */ -}}
{{- define "moments.podTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values -}}
metadata:
  labels:
    {{- include "moments.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    checksum/secret: {{ include (print $root.Template.BasePath "/secret.yaml") $root | sha256sum }}
spec:
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ include "moments.terminationGrace" (dict "root" $root "preStop" .preStop) }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: "{{ $v.image.repository }}:{{ $v.image.tag | default $root.Chart.AppVersion }}"
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args:
        {{- toYaml (concat (list "--config" "/etc/moments/moments.toml") .args) | nindent 8 }}
      envFrom:
        - configMapRef:
            name: {{ include "moments.fullname" $root }}-env
        - secretRef:
            name: {{ include "moments.secretName" $root }}
      env:
        - name: MOMENTS_HTTP_ADDR
          value: "0.0.0.0:8080"
        {{- if .quic }}
        - name: MOMENTS_QUIC_ADDR
          value: "0.0.0.0:4433"
        {{- end }}
        # GStreamer's plugin registry cache (the root filesystem is read-only)
        - name: XDG_CACHE_HOME
          value: /tmp/cache
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: 8080
          protocol: TCP
        {{- if .quic }}
        - name: quic
          containerPort: 4433
          protocol: UDP
        {{- end }}
      startupProbe:
        httpGet: {path: /healthz, port: http}
        {{- toYaml $v.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet: {path: /healthz, port: http}
        {{- toYaml $v.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet: {path: /readyz, port: http}
        {{- toYaml $v.probes.readiness | nindent 8 }}
      {{- if .preStop }}
      lifecycle:
        preStop:
          exec:
            command: ["sleep", "{{ $v.preStopSleepSeconds }}"]
      {{- end }}
      resources:
        {{- toYaml .values.resources | nindent 8 }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      volumeMounts:
        - {name: config, mountPath: /etc/moments/moments.toml, subPath: moments.toml, readOnly: true}
        - {name: data, mountPath: /var/lib/moments/data}
        - {name: tmp, mountPath: /tmp}
        {{- if and .quic $v.quic.tlsSecret }}
        - {name: quic-tls, mountPath: /etc/moments/tls, readOnly: true}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "moments.fullname" $root }}-config
    - name: data
      emptyDir: {}
    - name: tmp
      emptyDir: {}
    {{- if and .quic $v.quic.tlsSecret }}
    - name: quic-tls
      secret:
        secretName: {{ $v.quic.tlsSecret }}
    {{- end }}
  {{- with .values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- /* A component's PodDisruptionBudget. Call with (dict "root" $ "component" "api" "values" .Values.api). */ -}}
{{- define "moments.pdb" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "moments.fullname" .root }}-{{ .component }}
  labels:
    {{- include "moments.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  maxUnavailable: {{ .values.pdb.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "moments.selectorLabels" .root | nindent 6 }}
      app.kubernetes.io/component: {{ .component }}
{{- end }}
