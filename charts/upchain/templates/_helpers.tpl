{{- define "upchain.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Selector labels never change across chart versions: a Deployment's selector is immutable. */}}
{{- define "upchain.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "upchain.labels" -}}
{{ include "upchain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "upchain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "upchain.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "upchain.runnerNamespace" -}}
{{- default .Release.Namespace .Values.runnerNamespace -}}
{{- end -}}

{{/* --metrics-tls of the operator, from metrics.tls.mode. */}}
{{- define "upchain.metricsTls" -}}
{{- get (dict "selfSigned" "self-signed" "secret" "files" "none" "none") .Values.metrics.tls.mode -}}
{{- end -}}

{{- define "upchain.metricsScheme" -}}
{{- if eq .Values.metrics.tls.mode "none" }}HTTP{{ else }}HTTPS{{ end -}}
{{- end -}}

{{/* The runner image, by digest unless policy.runner.image.allowTag. */}}
{{- define "upchain.runnerImage" -}}
{{- $image := .Values.policy.runner.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else if $image.allowTag -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- else -}}
{{- fail "policy.runner.image.digest is required: the runner image receives the SSH key that is root on every node, so it is pulled by digest (sha256:<64 hex digits>, as your registry reports it for the runner image). To run it by tag instead, set policy.runner.image.allowTag=true: whoever can push that tag then gets root on every node." -}}
{{- end -}}
{{- end -}}

{{/* The installation policy the operator reads (crates/upchain-core/src/policy.rs). */}}
{{- define "upchain.policy" -}}
{{- $runner := .Values.policy.runner -}}
{{- $repositoryUrls := concat (list .Values.nodeScript.repository.url) $runner.repositoryUrls | uniq -}}
{{- $keyUrls := $runner.repositoryKeyUrls -}}
{{- if .Values.nodeScript.repository.keyUrl }}{{ $keyUrls = concat (list .Values.nodeScript.repository.keyUrl) $keyUrls | uniq }}{{ end -}}
{{- dict
  "runner" (dict
    "namespace" (include "upchain.runnerNamespace" .)
    "allowSystemNamespace" $runner.allowSystemNamespace
    "image" (include "upchain.runnerImage" .)
    "requireImageDigest" (not $runner.image.allowTag)
    "scriptConfigMap" (dict "name" .Values.nodeScript.name "key" "upgrade-node.sh")
    "sshSecret" $runner.sshSecret
    "knownHosts" (dict "name" "upchain-known-hosts" "key" "known_hosts")
    "allowAcceptNewHostKeys" $runner.allowAcceptNewHostKeys
    "repositoryUrls" $repositoryUrls
    "repositoryKeyUrls" $keyUrls
    "nodeSelector" $runner.nodeSelector
    "tolerations" $runner.tolerations)
  "drain" (dict "allowForce" .Values.policy.drain.allowForce)
  "hooks" (dict "allowed" .Values.policy.hooks.allowed)
  "snapshot" (dict "persistentVolumeClaim" .Values.policy.snapshot.persistentVolumeClaim)
  | toPrettyJson -}}
{{- end -}}

{{/* Egress to the cluster's DNS (kube-dns / CoreDNS in kube-system). */}}
{{- define "upchain.dnsEgress" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}
