{{/* The NOTES shown after install and upgrade (NOTES.txt), as a named template so that tests can render it. */}}
{{- define "example-product.notes" -}}
{{- $v := include "metering-sidecar.values" . | fromYaml -}}
{{- $sa := include "metering-sidecar.serviceAccountName" . -}}
{{- $ns := .Release.Namespace -}}
{{- $name := include "example-product.fullname" . -}}
{{- $arn := toString $v.irsaRoleArn -}}
{{- $partition := "aws" -}}
{{- $account := "ACCOUNT_ID" -}}
{{- $roleName := printf "%s-metering" $name -}}
{{- if $arn -}}
{{- $parts := split ":" $arn -}}
{{- $partition = $parts._1 -}}
{{- $account = $parts._4 -}}
{{- $roleName = regexReplaceAll "^.*:role/(.*/)?" $arn "" -}}
{{- end -}}
{{ .Chart.Name }} {{ .Chart.AppVersion }} is installed as release {{ .Release.Name }} in namespace {{ $ns }}.
Its pods start only once AWS Marketplace confirms your subscription: the metering sidecar ({{ $v.mode }} mode)
calls RegisterUsage{{ if $v.dimensions }} and then sends hourly MeterUsage records for {{ join ", " $v.dimensions }}{{ end }}.

THE IAM ROLE THE SIDECAR NEEDS
On EKS, AWS Marketplace accepts only IAM roles for service accounts (IRSA): not EKS Pod Identity, not the
node role, not access keys. The pods run as ServiceAccount {{ $ns }}/{{ $sa }}
{{- if $v.serviceAccount.create }}, annotated with
  eks.amazonaws.com/role-arn: {{ $v.irsaRoleArn }}
{{- else }} (not created by this chart:
it must carry the annotation eks.amazonaws.com/role-arn: <the role ARN>).
{{- end }}

That role needs:

1. This permissions policy (or the AWS managed policies AWSMarketplaceMeteringRegisterUsage and
   AWSMarketplaceMeteringFullAccess, which together grant the same two actions):

   {"Version": "2012-10-17",
    "Statement": [{"Effect": "Allow",
                   "Action": ["aws-marketplace:RegisterUsage", "aws-marketplace:MeterUsage"],
                   "Resource": "*"}]}

2. This trust policy, for your cluster's OIDC provider. Find OIDC_PROVIDER (without https://) with
     aws eks describe-cluster --name CLUSTER --query cluster.identity.oidc.issuer --output text
   (the provider must be registered in IAM: eksctl utils associate-iam-oidc-provider --cluster CLUSTER --approve)

   {"Version": "2012-10-17",
    "Statement": [{"Effect": "Allow",
                   "Principal": {"Federated": "arn:{{ $partition }}:iam::{{ $account }}:oidc-provider/OIDC_PROVIDER"},
                   "Action": "sts:AssumeRoleWithWebIdentity",
                   "Condition": {"StringEquals": {
                     "OIDC_PROVIDER:sub": "system:serviceaccount:{{ $ns }}:{{ $sa }}",
                     "OIDC_PROVIDER:aud": "sts.amazonaws.com"}}}]}

   Or let eksctl create the role with both:
     eksctl create iamserviceaccount --cluster CLUSTER --namespace {{ $ns }} --name {{ $sa }} \
       --role-name {{ $roleName }} --role-only --approve \
       --attach-policy-arn arn:{{ $partition }}:iam::aws:policy/AWSMarketplaceMeteringRegisterUsage \
       --attach-policy-arn arn:{{ $partition }}:iam::aws:policy/AWSMarketplaceMeteringFullAccess

IRSA is read when a pod starts. If the role did not exist yet when the pods started, restart them once it
does (a `helm upgrade` that changes meteringSidecar.irsaRoleArn restarts them by itself):
  kubectl -n {{ $ns }} rollout restart deployment/{{ $name }}

CHECK
  kubectl -n {{ $ns }} get pods -l app.kubernetes.io/instance={{ .Release.Name }}
  kubectl -n {{ $ns }} logs deployment/{{ $name }} -c metering-sidecar
{{- if .Values.tests.enabled }}
  helm test {{ .Release.Name }} -n {{ $ns }}
{{- end }}
A pod that stays not ready has a sidecar that is still retrying RegisterUsage (up to 30 minutes) or was
refused; its log says why (not subscribed, wrong Region, the node role instead of IRSA, ...).
{{- end }}
