{{/*
The sidecar container, as one list item. It follows the container contract in README.md exactly
(`metering-sidecar inject` renders the same container). In native mode it carries restartPolicy: Always and
belongs in initContainers; in plain mode it belongs in containers. Prefer the mode-aware
"metering-sidecar.initContainers" and "metering-sidecar.containers", which render it in the right place.
*/}}
{{- define "metering-sidecar.container" -}}
{{- include "metering-sidecar.validate" . -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
- name: metering-sidecar
  image: {{ printf "%s:%s" (toString $v.image.repository) (toString $v.image.tag) | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy | quote }}
  {{- if include "metering-sidecar.native" . }}
  restartPolicy: Always
  {{- end }}
  args:
    - run
  env:
    - name: METERING_PRODUCT_CODE
      value: {{ toString $v.productCode | quote }}
    - name: METERING_PUBLIC_KEY_VERSION
      value: {{ toString $v.publicKeyVersion | quote }}
    - name: METERING_PUBLIC_KEY_FILE
      value: /etc/metering/public-key.pem
    - name: METERING_DIMENSIONS
      value: {{ join "," ($v.dimensions | default list) | quote }}
    - name: METERING_LISTEN
      value: 127.0.0.1:8787
    - name: METERING_PROBE_LISTEN
      value: 0.0.0.0:8788
    - name: METERING_STATE_DIR
      value: /var/lib/metering
    - name: METERING_SHUTDOWN_GRACE
      value: "20"
    - name: METERING_LOG_FORMAT
      value: json
    - name: METERING_POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: METERING_POD_UID
      valueFrom:
        fieldRef:
          fieldPath: metadata.uid
    {{- if $v.apiTokenSecret }}
    - name: METERING_API_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ toString $v.apiTokenSecret | quote }}
          key: token
    {{- end }}
  ports:
    - name: probes
      containerPort: 8788
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: probes
    periodSeconds: 2
    failureThreshold: 900
  readinessProbe:
    httpGet:
      path: /readyz
      port: probes
    periodSeconds: 10
  livenessProbe:
    httpGet:
      path: /healthz
      port: probes
    periodSeconds: 10
    failureThreshold: 3
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    readOnlyRootFilesystem: true
    allowPrivilegeEscalation: false
    capabilities:
      drop:
        - ALL
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: metering-state
      mountPath: /var/lib/metering
    - name: metering-public-key
      mountPath: /etc/metering
      readOnly: true
{{- end }}

{{/* List items for the pod's initContainers: the sidecar in native mode, nothing in plain mode. */}}
{{- define "metering-sidecar.initContainers" -}}
{{- if include "metering-sidecar.native" . -}}
{{- include "metering-sidecar.container" . -}}
{{- end -}}
{{- end }}

{{/* List items for the pod's containers: the sidecar in plain mode, nothing in native mode. */}}
{{- define "metering-sidecar.containers" -}}
{{- if not (include "metering-sidecar.native" .) -}}
{{- include "metering-sidecar.container" . -}}
{{- end -}}
{{- end }}
