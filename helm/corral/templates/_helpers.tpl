{{/* Object name prefix: <release>-corral, or the release name when it already says corral.
     It is also the RayService name, which KubeRay caps at 47 characters (MaxRayServiceNameLength =
     MaxRayClusterNameLength - 6 in ray-operator/controllers/ray/utils/constant.go, checked by
     ValidateRayServiceMetadata in utils/validation.go): a longer name fails here instead of being
     rejected by the operator after install. */}}
{{- define "corral.fullname" -}}
{{- $full := "" -}}
{{- if .Values.fullnameOverride -}}
{{- $full = .Values.fullnameOverride -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- $full = .Release.Name -}}
{{- else -}}
{{- $full = printf "%s-%s" .Release.Name $name -}}
{{- end -}}
{{- end -}}
{{- if gt (len $full) 47 -}}
{{- fail (printf "the RayService name %q is %d characters; KubeRay accepts at most 47 (set fullnameOverride or a shorter release name)" $full (len $full)) -}}
{{- end -}}
{{- $full -}}
{{- end -}}

{{/* KubeRay's Serve Service: it selects only the pods of the cluster that serves (during an upgrade,
     the pending cluster joins it once its applications are RUNNING). Name from GenerateServeServiceName
     in ray-operator/controllers/ray/utils/util.go ("<rayservice>-serve-svc"). */}}
{{- define "corral.serveService" -}}
{{- printf "%s-serve-svc" (include "corral.fullname" .) -}}
{{- end -}}

{{- define "corral.serveURL" -}}
{{- printf "http://%s.%s.svc:%v" (include "corral.serveService" .) .Release.Namespace (.Values.fleet.server.port | default 8000) -}}
{{- end -}}

{{- define "corral.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "corral.labels" -}}
{{ include "corral.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "corral.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}

{{- define "corral.apiKeySecret" -}}
{{- .Values.apiKeys.existingSecret | default (printf "%s-api-keys" (include "corral.fullname" .)) -}}
{{- end -}}

{{- define "corral.modelCacheClaim" -}}
{{- if .Values.modelCache.existingClaim -}}
{{- .Values.modelCache.existingClaim -}}
{{- else -}}
{{- if not .Values.modelCache.storageClass -}}
{{- fail "modelCache.enabled needs modelCache.existingClaim (a PVC with the weights) or modelCache.storageClass (a ReadWriteMany class such as EFS, Filestore, Azure Files or CephFS): a claim on the default class does not provision on the usual block classes, or binds one node only" -}}
{{- end -}}
{{- printf "%s-model-cache" (include "corral.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The API keys of the chart, comma-separated, computed once per render (memoized in .Values, so the
     Secret and the hashes in the Serve config agree even for a generated key). */}}
{{- define "corral.apiKeyList" -}}
{{- if not (hasKey .Values "corralRenderedKeys") -}}
{{- $keys := list -}}
{{- if .Values.apiKeys.existingSecret -}}
{{- $s := lookup "v1" "Secret" .Release.Namespace .Values.apiKeys.existingSecret -}}
{{- if and $s $s.data -}}
{{- range $k := list "api-key" "api-keys" -}}
{{- with index $s.data $k -}}
{{- $keys = concat $keys (splitList "," (b64dec .)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- else if .Values.apiKeys.keys -}}
{{- $keys = splitList "," .Values.apiKeys.keys -}}
{{- else -}}
{{- $s := lookup "v1" "Secret" .Release.Namespace (include "corral.apiKeySecret" .) -}}
{{- if and $s $s.data (index $s.data "api-keys") -}}
{{- $keys = splitList "," (b64dec (index $s.data "api-keys")) -}}
{{- else -}}
{{- $keys = list (printf "sk-corral-%s" (randAlphaNum 32)) -}}
{{- end -}}
{{- end -}}
{{- $clean := list -}}
{{- range $keys }}{{ if trim . }}{{ $clean = append $clean (trim .) }}{{ end }}{{ end -}}
{{- $_ := set .Values "corralRenderedKeys" (join "," (uniq $clean)) -}}
{{- end -}}
{{- .Values.corralRenderedKeys -}}
{{- end -}}

{{/* The ingress's `auth` (an AuthSpec): fleet.auth's keys plus the hashes of the chart's keys. */}}
{{- define "corral.auth" -}}
{{- $fleetAuth := .Values.fleet.auth | default dict -}}
{{- $keys := list -}}
{{- range ($fleetAuth.keys | default list) }}{{ $keys = append $keys . }}{{ end -}}
{{- $enabled := or .Values.apiKeys.enabled ($fleetAuth.enabled | default false) -}}
{{- if .Values.apiKeys.enabled -}}
{{- range $i, $k := splitList "," (include "corral.apiKeyList" .) -}}
{{- if $k -}}
{{- $keys = append $keys (dict "name" (printf "chart-key-%d" $i) "sha256" (sha256sum $k) "scopes" (list "inference" "admin")) -}}
{{- end -}}
{{- end -}}
{{- if not $keys -}}
{{- fail (printf "apiKeys.enabled: no key to enforce. apiKeys.existingSecret %q was not readable (helm template and --dry-run see no cluster): list its keys' SHA-256 hashes in fleet.auth.keys" .Values.apiKeys.existingSecret) -}}
{{- end -}}
{{- else if and (or .Values.ingress.enabled .Values.httpRoute.enabled) (not .Values.apiKeys.allowUnauthenticated) (not $enabled) -}}
{{- fail "apiKeys.enabled is false while an Ingress or HTTPRoute exposes the endpoint: set apiKeys.allowUnauthenticated: true to serve it open on purpose" -}}
{{- end -}}
{{- toJson (dict "enabled" $enabled "keys" $keys) -}}
{{- end -}}

{{/* The Serve config KubeRay deploys, in the shape of corral.serving.app.serve_config: the fleet in
     `args` without its live parts (routes, rollout, auth), which go into per-deployment overrides that
     Serve applies in place (Ray hashes `args` and the deployments' autoscaling policies into the code
     version, ray/serve/_private/deploy_utils.py get_app_code_version; a change there restarts every
     replica). The overrides are complete from the first render: the ingress's user_config (routes,
     auth) and each arm's autoscaling_config, policy included, as
     corral.cluster.spec.autoscaling.serve_autoscaling_config builds it, with the defaults read from
     files/spec-defaults.json (generated from the same pydantic models by scripts/gen-values-schema.py). tests/unit/test_kuberay_serve_config.py
     compares both. */}}
{{- define "corral.serveConfigV2" -}}
{{- $fleet := .Values.fleet -}}
{{- $defaults := .Files.Get "files/spec-defaults.json" | fromJson -}}
{{- $asDefaults := $defaults.autoscaling -}}
{{- $routes := dict -}}
{{- range ($fleet.routes | default list) -}}
{{- $w := dict -}}
{{- range .arms }}{{ $_ := set $w .arm (int .weight) }}{{ end -}}
{{- $_ := set $routes .name $w -}}
{{- end -}}
{{- $deployments := list (dict "name" "CorralIngress" "user_config" (dict "routes" $routes "auth" (include "corral.auth" . | fromJson))) -}}
{{- range $fleet.arms -}}
{{- $replicas := .replicas | default dict -}}
{{- $min := int (hasKey $replicas "min" | ternary $replicas.min $defaults.replicas.min) -}}
{{- $max := int ($replicas.max | default $defaults.replicas.max) -}}
{{- $initial := max $min 1 -}}
{{- if and (hasKey $replicas "initial") (not (kindIs "invalid" $replicas.initial)) }}{{ $initial = int $replicas.initial }}{{ end -}}
{{- $engine := .engine | default dict -}}
{{- $seqs := int ($engine.max_num_seqs | default $defaults.max_num_seqs) -}}
{{- $spec := merge (deepCopy (.autoscaling | default dict)) $asDefaults -}}
{{- $cfg := dict "min_replicas" $min "initial_replicas" $initial "max_replicas" $max "target_ongoing_requests" $spec.target_ongoing_requests "upscale_delay_s" $spec.upscale_delay_s "downscale_delay_s" $spec.downscale_delay_s "metrics_interval_s" $spec.metrics_interval_s "look_back_period_s" $spec.look_back_period_s -}}
{{- if eq $spec.policy "corral" -}}
{{- $kwargs := omit $spec "policy" "metrics_interval_s" -}}
{{- $_ := set $kwargs "arm" .name -}}
{{- $_ := set $kwargs "min_replicas" $min -}}
{{- $_ := set $kwargs "max_replicas" $max -}}
{{- $_ := set $kwargs "max_num_seqs" $seqs -}}
{{- $_ := set $cfg "upscale_delay_s" 0.0 -}}
{{- $_ := set $cfg "downscale_delay_s" 0.0 -}}
{{- $_ := set $cfg "policy" (dict "policy_function" $defaults.policy_import_path "policy_kwargs" $kwargs) -}}
{{- end -}}
{{- $deployments = append $deployments (dict "name" (printf "LLMServer:%s" .name) "autoscaling_config" $cfg) -}}
{{- end -}}
{{- /* Live weights and floors survive `helm upgrade`: the rollout controller owns them in the live
       RayService, so the render takes them from there (lookup; empty under helm template / --dry-run,
       where the values' weights are used). A route keeps its live weights while its arms are the same. */ -}}
{{- if .Values.rayService.keepLiveWeights -}}
{{- $live := lookup "ray.io/v1" "RayService" .Release.Namespace (include "corral.fullname" .) -}}
{{- if and $live $live.spec $live.spec.serveConfigV2 -}}
{{- range (fromYaml $live.spec.serveConfigV2).applications -}}
{{- if eq .name ($fleet.name | default "corral") -}}
{{- range .deployments -}}
{{- if and (eq .name "CorralIngress") .user_config .user_config.routes -}}
{{- range $r, $w := .user_config.routes -}}
{{- if and (hasKey $routes $r) (eq (keys $w | sortAlpha | join ",") (keys (index $routes $r) | sortAlpha | join ",")) -}}
{{- $_ := set $routes $r $w -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $liveName := .name -}}
{{- $liveMin := dig "autoscaling_config" "min_replicas" nil . -}}
{{- range $deployments -}}
{{- if and (eq .name $liveName) (hasKey . "autoscaling_config") (not (kindIs "invalid" $liveMin)) -}}
{{- $c := .autoscaling_config -}}
{{- if and (ge (int $liveMin) (int $c.min_replicas)) (le (int $liveMin) (int $c.max_replicas)) -}}
{{- $_ := set $c "min_replicas" (int $liveMin) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $app := dict "name" ($fleet.name | default "corral") "route_prefix" "/" "import_path" "corral.serving.app:app_builder" "args" (dict "fleet" (omit $fleet "routes" "rollout" "auth")) "deployments" $deployments -}}
{{- toYaml (dict "applications" (list $app)) -}}
{{- end -}}
