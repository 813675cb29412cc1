{{/* The pod's two volumes, as list items: the state emptyDir and the public key ConfigMap. */}}
{{- define "metering-sidecar.volumes" -}}
- name: metering-state
  emptyDir:
    sizeLimit: 64Mi
- name: metering-public-key
  configMap:
    name: {{ include "metering-sidecar.publicKeyConfigMapName" . | quote }}
    items:
      - key: public-key.pem
        path: public-key.pem
{{- end }}

{{/*
Pod spec keys: the ServiceAccount that carries the IRSA role, and a grace period long enough for the
sidecar to send the last partial hour after SIGTERM (it takes up to 20 s).
*/}}
{{- define "metering-sidecar.podSpecExtras" -}}
{{- include "metering-sidecar.validate" . -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
serviceAccountName: {{ include "metering-sidecar.serviceAccountName" . | quote }}
terminationGracePeriodSeconds: {{ int $v.terminationGracePeriodSeconds }}
{{- end }}

{{/*
Pod template annotations: the injected marker, and a checksum of what the pod reads only when it starts
(the public key and the IRSA role), so that changing either rolls the pods.
*/}}
{{- define "metering-sidecar.podAnnotations" -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
metering-sidecar.io/injected: "true"
metering-sidecar.io/config-checksum: {{ printf "%s|%s|%s" (toString $v.publicKey | trim) (toString $v.irsaRoleArn) (include "metering-sidecar.serviceAccountName" .) | sha256sum | quote }}
{{- end }}
