{{/*
Named templates. Every "dcr-sidecar.*" template below takes a context dict so that an
application chart that has this chart as a dependency can call them from its own templates:

  {{- $dcr := dict "root" $ "values" (index .Values "dcr-sidecar") "replicas" .Values.replicaCount }}
  {{- with include "dcr-sidecar.initContainers" $dcr }}
  initContainers:
    {{- . | nindent 8 }}
  {{- end }}
  containers:
    - name: my-app ...
    {{- include "dcr-sidecar.containers" $dcr | nindent 8 }}
  volumes:
    {{- include "dcr-sidecar.volumes" $dcr | nindent 8 }}

  root: the top-level context ($); values: this chart's values; replicas (optional): the pod's
  replica count, checked against the store (more than one needs redis).
*/}}

{{- define "dcr-sidecar.appVersion" -}}0.1.0{{- end -}}

{{- define "dcr-sidecar.name" -}}
{{- default "dcr-sidecar" .values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dcr-sidecar.fullname" -}}
{{- if .values.fullnameOverride -}}
{{- .values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "dcr-sidecar.name" . -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dcr-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dcr-sidecar.name" . }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "dcr-sidecar.labels" -}}
helm.sh/chart: {{ printf "dcr-sidecar-%s" (include "dcr-sidecar.appVersion" .) }}
{{ include "dcr-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ include "dcr-sidecar.appVersion" . | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* Labels the pod carrying the sidecar must have: the metrics Service selects on them. */}}
{{- define "dcr-sidecar.podLabels" -}}
dcr-sidecar.io/instance: {{ include "dcr-sidecar.fullname" . }}
{{- end -}}

{{- define "dcr-sidecar.image" -}}
{{- $tag := .values.image.tag | default (include "dcr-sidecar.appVersion" .) -}}
{{- printf "%s:%s" .values.image.repository $tag -}}
{{- end -}}

{{- define "dcr-sidecar.configMapName" -}}
{{- .values.config.existingConfigMap | default (include "dcr-sidecar.fullname" .) -}}
{{- end -}}

{{/* Fails rendering on combinations that cannot work. */}}
{{- define "dcr-sidecar.validate" -}}
{{- $v := .values -}}
{{- $replicas := int (default 1 .replicas) -}}
{{- if and (gt $replicas 1) (ne $v.store.backend "redis") -}}
{{- fail (printf "dcr-sidecar: %d replicas need the shared redis store (store.backend: redis, with store.redis.existingSecret); with store.backend %q every replica would register and keep its own client" $replicas $v.store.backend) -}}
{{- end -}}
{{- if and $v.front.enabled (not $v.front.publicBaseUrl) -}}
{{- fail "dcr-sidecar: front.enabled needs front.publicBaseUrl (the https URL browsers and authorization servers use, e.g. https://app.example.com)" -}}
{{- end -}}
{{- if and $v.ingress.enabled (not $v.front.enabled) -}}
{{- fail "dcr-sidecar: ingress.enabled routes to the front listener: set front.enabled (and front.publicBaseUrl)" -}}
{{- end -}}
{{- if and (eq $v.store.backend "redis") (not $v.store.redis.existingSecret) -}}
{{- fail "dcr-sidecar: store.backend redis needs store.redis.existingSecret (a Secret holding the Redis URL under store.redis.urlKey)" -}}
{{- end -}}
{{- if $v.workloadIdentity.enabled -}}
{{- if not $v.workloadIdentity.audience -}}
{{- fail "dcr-sidecar: workloadIdentity.enabled needs workloadIdentity.audience (the audience the authorization server expects in the projected token)" -}}
{{- end -}}
{{- $names := list -}}
{{- range (default list (get (default dict $v.config.sidecar) "upstreams")) -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- range $v.workloadIdentity.upstreams -}}
{{- if and (not $v.config.existingConfigMap) (not (has . $names)) -}}
{{- fail (printf "dcr-sidecar: workloadIdentity.upstreams names %q, which is not in config.sidecar.upstreams" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dcr-sidecar.storeConfig" -}}
{{- $s := .values.store -}}
{{- if eq $s.backend "redis" -}}
backend: redis
url: {file: /etc/dcr-sidecar/store/{{ $s.redis.urlKey }}}
key_prefix: {{ $s.redis.keyPrefix | quote }}
{{- else -}}
backend: file
{{- /* An emptyDir is created mode 0777, which the sidecar refuses to keep secrets in: the
       store goes one directory down, which the sidecar creates 0700. */}}
path: /var/lib/dcr-sidecar/{{ if not $s.file.existingClaim }}store/{{ end }}credentials.json
ephemeral: {{ not $s.file.existingClaim }}
{{- end -}}
{{- end -}}

{{/* The sidecar's YAML: config.sidecar with the keys the chart owns set from its values. */}}
{{- define "dcr-sidecar.configYaml" -}}
{{- $v := .values -}}
{{- $cfg := deepCopy (default dict $v.config.sidecar) -}}
{{- $_ := set $cfg "version" 1 -}}
{{- $_ := set $cfg "listen" (dict "host" "127.0.0.1" "port" (int $v.ports.backchannel)) -}}
{{- $_ := set $cfg "management" (dict "host" "0.0.0.0" "port" (int $v.ports.management)) -}}
{{- $_ := set $cfg "store" (include "dcr-sidecar.storeConfig" . | fromYaml) -}}
{{- if $v.front.enabled -}}
{{- $front := dict "host" "0.0.0.0" "port" (int $v.front.port) -}}
{{- if $v.front.tls.existingSecret -}}
{{- $_ := set $front "tls" (dict "cert_file" "/etc/dcr-sidecar/tls/tls.crt" "key_file" "/etc/dcr-sidecar/tls/tls.key") -}}
{{- end -}}
{{- $_ := set $cfg "front" $front -}}
{{- $_ := set $cfg "public_base_url" $v.front.publicBaseUrl -}}
{{- end -}}
{{- if $v.trustBundle.configMap -}}
{{- $security := default dict (get $cfg "security") -}}
{{- $tls := default dict (get $security "tls") -}}
{{- $_ := set $tls "ca_file" (printf "/etc/dcr-sidecar/trust/%s" $v.trustBundle.key) -}}
{{- $_ := set $tls "system" $v.trustBundle.system -}}
{{- $_ := set $security "tls" $tls -}}
{{- $_ := set $cfg "security" $security -}}
{{- end -}}
{{- if $v.workloadIdentity.enabled -}}
{{- $file := printf "/var/run/secrets/dcr-sidecar/tokens/%s" $v.workloadIdentity.path -}}
{{- range (default list (get $cfg "upstreams")) -}}
{{- if has .name $v.workloadIdentity.upstreams -}}
{{- $_ := set . "client_assertion" (dict "file" $file) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/* Pod annotations: a config change rolls the pods (a new ConfigMap content). */}}
{{- define "dcr-sidecar.podAnnotations" -}}
checksum/config: {{ include "dcr-sidecar.configYaml" . | sha256sum }}
{{- end -}}

{{- define "dcr-sidecar.container" -}}
{{- include "dcr-sidecar.validate" . -}}
{{- $v := .values -}}
- name: dcr-sidecar
  image: {{ include "dcr-sidecar.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args: [serve, --config, {{ printf "/etc/dcr-sidecar/config/%s" $v.config.key | quote }}]
  ports:
    - name: dcr-mgmt
      containerPort: {{ $v.ports.management }}
      protocol: TCP
    {{- if $v.front.enabled }}
    - name: dcr-front
      containerPort: {{ $v.front.port }}
      protocol: TCP
    {{- end }}
  {{- with $v.extraEnv }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    # A directory mount (no subPath), so ConfigMap updates reach the file and are reloaded.
    - name: dcr-sidecar-config
      mountPath: /etc/dcr-sidecar/config
      readOnly: true
    - name: dcr-sidecar-state
      mountPath: /var/lib/dcr-sidecar
    {{- if $v.existingSecret }}
    - name: dcr-sidecar-secrets
      mountPath: {{ $v.secretMountPath }}
      readOnly: true
    {{- end }}
    {{- if eq $v.store.backend "redis" }}
    - name: dcr-sidecar-store
      mountPath: /etc/dcr-sidecar/store
      readOnly: true
    {{- end }}
    {{- if and $v.front.enabled $v.front.tls.existingSecret }}
    # A directory mount (no subPath), so a rotated Secret reaches the files: re-read.
    - name: dcr-sidecar-tls
      mountPath: /etc/dcr-sidecar/tls
      readOnly: true
    {{- end }}
    {{- if $v.trustBundle.configMap }}
    # A directory mount (no subPath): a rotated bundle reaches the file and is re-read.
    - name: dcr-sidecar-trust
      mountPath: /etc/dcr-sidecar/trust
      readOnly: true
    {{- end }}
    {{- if $v.workloadIdentity.enabled }}
    # The kubelet renews the token in place; the sidecar re-reads it on change.
    - name: dcr-sidecar-workload-token
      mountPath: /var/run/secrets/dcr-sidecar/tokens
      readOnly: true
    {{- end }}
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* The sidecar as an init container (native sidecar mode), else nothing. */}}
{{- define "dcr-sidecar.initContainers" -}}
{{- if .values.nativeSidecar -}}
{{ include "dcr-sidecar.container" . }}
{{- end -}}
{{- end -}}

{{/* The sidecar as an ordinary container, else nothing (native sidecar mode). */}}
{{- define "dcr-sidecar.containers" -}}
{{- if not .values.nativeSidecar -}}
{{ include "dcr-sidecar.container" . }}
{{- end -}}
{{- end -}}

{{- define "dcr-sidecar.volumes" -}}
{{- $v := .values -}}
- name: dcr-sidecar-config
  configMap:
    name: {{ include "dcr-sidecar.configMapName" . }}
- name: dcr-sidecar-state
  {{- if $v.store.file.existingClaim }}
  persistentVolumeClaim:
    claimName: {{ $v.store.file.existingClaim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $v.store.file.sizeLimit }}
  {{- end }}
{{- if $v.existingSecret }}
- name: dcr-sidecar-secrets
  secret:
    secretName: {{ $v.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if eq $v.store.backend "redis" }}
- name: dcr-sidecar-store
  secret:
    secretName: {{ $v.store.redis.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if and $v.front.enabled $v.front.tls.existingSecret }}
- name: dcr-sidecar-tls
  secret:
    secretName: {{ $v.front.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if $v.trustBundle.configMap }}
- name: dcr-sidecar-trust
  configMap:
    name: {{ $v.trustBundle.configMap }}
{{- end }}
{{- if $v.workloadIdentity.enabled }}
- name: dcr-sidecar-workload-token
  projected:
    sources:
      - serviceAccountToken:
          audience: {{ $v.workloadIdentity.audience | quote }}
          expirationSeconds: {{ int $v.workloadIdentity.expirationSeconds }}
          path: {{ $v.workloadIdentity.path | quote }}
{{- end }}
{{- with $v.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Service ports for the pod carrying the sidecar: the front listener, when enabled (an
     application chart adds these to its own Service). */}}
{{- define "dcr-sidecar.servicePorts" -}}
{{- if .values.front.enabled -}}
- name: front
  port: {{ .values.front.port }}
  targetPort: dcr-front
  protocol: TCP
{{- end -}}
{{- end -}}

{{/* The upstream names the Ingress routes. */}}
{{- define "dcr-sidecar.ingressNames" -}}
{{- $names := .values.ingress.upstreamNames -}}
{{- if not $names -}}
{{- range (.values.config.sidecar.upstreams | default list) -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}
{{- if not $names -}}
{{- fail "dcr-sidecar: ingress.enabled needs upstream names: list them in ingress.upstreamNames (with config.existingConfigMap) or in config.sidecar.upstreams" -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}
