{{/*
metering-sidecar library chart: values, names, labels and validation.

Every template here runs in the *product chart's* context: pass the root context (`.`), and put the
settings under the product chart's `meteringSidecar:` values key. The defaults below apply to any key the
product chart leaves out (README.md lists them).
*/}}

{{- define "metering-sidecar.defaults" -}}
productCode: ""
publicKeyVersion: 1
publicKey: ""
publicKeyConfigMap:
  create: true
  name: ""
dimensions: []
mode: native
image:
  repository: metering-sidecar
  tag: "0.1.0"
  pullPolicy: IfNotPresent
irsaRoleArn: ""
serviceAccount:
  create: true
  name: ""
  annotations: {}
apiTokenSecret: ""
resources:
  requests:
    cpu: 10m
    memory: 64Mi
  limits:
    cpu: 200m
    memory: 128Mi
terminationGracePeriodSeconds: 45
{{- end }}

{{/*
The effective settings: the defaults, overridden by .Values.meteringSidecar. Maps one level down (image,
serviceAccount, publicKeyConfigMap, resources) are merged key by key, so `image: {tag: x}` keeps the
default repository. Unlike sprig's merge, an explicit `false` wins over a default `true`.
Usage: {{ $v := include "metering-sidecar.values" . | fromYaml }}
*/}}
{{- define "metering-sidecar.values" -}}
{{- $v := include "metering-sidecar.defaults" . | fromYaml -}}
{{- $user := .Values.meteringSidecar | default dict -}}
{{- range $key, $value := $user -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $default := get $v $key -}}
{{- if and (kindIs "map" $default) (kindIs "map" $value) -}}
{{- range $k2, $v2 := $value -}}
{{- if not (kindIs "invalid" $v2) -}}
{{- $_ := set $default $k2 $v2 -}}
{{- end -}}
{{- end -}}
{{- else -}}
{{- $_ := set $v $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $v -}}
{{- end }}

{{/* "true" in native mode (an init container with restartPolicy: Always), "" in plain mode. */}}
{{- define "metering-sidecar.native" -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
{{- if eq (toString $v.mode) "native" -}}true{{- end -}}
{{- end }}

{{- define "metering-sidecar.serviceAccountName" -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
{{- $v.serviceAccount.name | default (printf "%s-metering-sidecar" .Release.Name) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{- define "metering-sidecar.publicKeyConfigMapName" -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
{{- $v.publicKeyConfigMap.name | default (printf "%s-metering-public-key" .Release.Name) | trunc 63 | trimSuffix "-" -}}
{{- end }}

{{/* Labels for the ServiceAccount and ConfigMap this library renders. */}}
{{- define "metering-sidecar.labels" -}}
app.kubernetes.io/name: metering-sidecar
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: metering
app.kubernetes.io/part-of: {{ .Chart.Name | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
{{- end }}

{{/*
Fails the render with a message that names the value, for product charts that do not copy the example's
values.schema.json. Called by every template that renders something.
*/}}
{{- define "metering-sidecar.validate" -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
{{- $code := toString $v.productCode -}}
{{- if not $code -}}
{{- fail "meteringSidecar.productCode is required: the product code AWS Marketplace gave your product" -}}
{{- end -}}
{{- if not (regexMatch "^[-a-zA-Z0-9/=:_.@]{1,255}$" $code) -}}
{{- fail (printf "meteringSidecar.productCode %q is not a product code (1-255 of A-Z a-z 0-9 - / = : _ . @)" $code) -}}
{{- end -}}
{{- if not (regexMatch "^[1-9][0-9]*$" (toString $v.publicKeyVersion)) -}}
{{- fail (printf "meteringSidecar.publicKeyVersion %v must be a whole number, 1 or more" $v.publicKeyVersion) -}}
{{- end -}}
{{- if not (has (toString $v.mode) (list "native" "plain")) -}}
{{- fail (printf "meteringSidecar.mode must be native or plain, not %q" (toString $v.mode)) -}}
{{- end -}}
{{- if and (eq (toString $v.mode) "native") (semverCompare "<1.29-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "meteringSidecar.mode=native needs Kubernetes 1.29 or later (native sidecars); this cluster is %s: set meteringSidecar.mode=plain" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- if and $v.publicKeyConfigMap.create (not (contains "BEGIN PUBLIC KEY" (toString $v.publicKey))) -}}
{{- fail "meteringSidecar.publicKey is required: the PEM public key (-----BEGIN PUBLIC KEY-----) AWS Marketplace gave your product, or set publicKeyConfigMap.create=false and publicKeyConfigMap.name" -}}
{{- end -}}
{{- if and (not $v.publicKeyConfigMap.create) (not $v.publicKeyConfigMap.name) -}}
{{- fail "meteringSidecar.publicKeyConfigMap.name is required when publicKeyConfigMap.create is false" -}}
{{- end -}}
{{- $arn := toString $v.irsaRoleArn -}}
{{- if and $v.serviceAccount.create (not $arn) -}}
{{- fail "meteringSidecar.irsaRoleArn is required: the IAM role (IRSA) with aws-marketplace:RegisterUsage and aws-marketplace:MeterUsage; AWS accepts no other credentials on EKS" -}}
{{- end -}}
{{- if and $arn (not (regexMatch "^arn:aws[a-zA-Z-]*:iam::[0-9]{12}:role/.+$" $arn)) -}}
{{- fail (printf "meteringSidecar.irsaRoleArn %q is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)" $arn) -}}
{{- end -}}
{{- if and (not $v.serviceAccount.create) (not $v.serviceAccount.name) -}}
{{- fail "meteringSidecar.serviceAccount.name is required when serviceAccount.create is false (it must carry the eks.amazonaws.com/role-arn annotation)" -}}
{{- end -}}
{{- $dims := $v.dimensions | default list -}}
{{- if not (kindIs "slice" $dims) -}}
{{- fail "meteringSidecar.dimensions must be a list of dimension API names" -}}
{{- end -}}
{{- if gt (len $dims) 24 -}}
{{- fail "meteringSidecar.dimensions: AWS Marketplace allows at most 24 custom dimensions" -}}
{{- end -}}
{{- range $dims -}}
{{- if not (regexMatch "^[^,\\s]{1,255}$" (toString .)) -}}
{{- fail (printf "meteringSidecar.dimensions: %q is not a dimension API name (1-255 characters, no commas or spaces)" (toString .)) -}}
{{- end -}}
{{- end -}}
{{- if ne (len $dims) (len (uniq $dims)) -}}
{{- fail "meteringSidecar.dimensions: a dimension is listed twice" -}}
{{- end -}}
{{- if and $v.apiTokenSecret (not (regexMatch "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$" (toString $v.apiTokenSecret))) -}}
{{- fail (printf "meteringSidecar.apiTokenSecret %q is not a Secret name" (toString $v.apiTokenSecret)) -}}
{{- end -}}
{{- end }}
