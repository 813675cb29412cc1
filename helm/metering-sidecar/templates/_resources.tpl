{{/*
The ServiceAccount the sidecar's pods run as, annotated with the buyer's IRSA role. AWS Marketplace accepts
only IRSA on EKS (not EKS Pod Identity, the node role or static keys). Renders nothing when
serviceAccount.create is false.
*/}}
{{- define "metering-sidecar.serviceAccount" -}}
{{- include "metering-sidecar.validate" . -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
{{- if $v.serviceAccount.create -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "metering-sidecar.serviceAccountName" . | quote }}
  labels:
    {{- include "metering-sidecar.labels" . | nindent 4 }}
  annotations:
    eks.amazonaws.com/role-arn: {{ toString $v.irsaRoleArn | quote }}
    {{- with $v.serviceAccount.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
{{- end }}

{{/*
The ConfigMap with the product's AWS Marketplace public key (key public-key.pem). Renders nothing when
publicKeyConfigMap.create is false.
*/}}
{{- define "metering-sidecar.publicKeyConfigMap" -}}
{{- include "metering-sidecar.validate" . -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
{{- if $v.publicKeyConfigMap.create -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "metering-sidecar.publicKeyConfigMapName" . | quote }}
  labels:
    {{- include "metering-sidecar.labels" . | nindent 4 }}
data:
  public-key.pem: |
    {{- toString $v.publicKey | trim | nindent 4 }}
{{- end -}}
{{- end }}
