#!/usr/bin/env bash
# Deploys a pull request's commit to a Kubernetes namespace of its own with Helm: previewbot's
# command provisioner runs it (PREVIEW_DEPLOY_COMMAND). A redeploy upgrades the same release in
# place; one that fails rolls back to the last good one. The last line it prints is the URL.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=examples/kubernetes/common.sh
source "$here/common.sh"

chart=${DEPLOY_HELM_CHART:?set DEPLOY_HELM_CHART to the chart: a path, repo/chart or oci://…}
domain=${DEPLOY_DOMAIN:?set DEPLOY_DOMAIN to the domain whose subdomains reach the cluster ingress}
[[ $domain =~ ^[a-z0-9.-]+$ ]] || die "DEPLOY_DOMAIN must be a DNS name"
# The image is the one CI built and tagged with the commit: nothing is built here.
[[ ${PREVIEW_SHA:-} =~ ^[0-9a-f]{40}$ ]] || die "PREVIEW_SHA must be a commit id: this example deploys the image built for a commit"
preview_host="$namespace.$domain"

printf 'deploying %s (branch %s) of %s to namespace %s\n' "$PREVIEW_SHA" "$PREVIEW_BRANCH" "$PREVIEW_REPOSITORY" "$namespace"
"${kubectl[@]}" create namespace "$namespace" --dry-run=client -o yaml | "${kubectl[@]}" apply -f -
"${kubectl[@]}" label namespace "$namespace" --overwrite \
    app.kubernetes.io/managed-by=previewbot "previewbot/environment=$environment" "previewbot/pr=$PREVIEW_PR_NUMBER"
# Annotations take any text: the branch goes there as one argument, and nowhere it could be parsed.
"${kubectl[@]}" annotate namespace "$namespace" --overwrite \
    "previewbot/repository=$PREVIEW_REPOSITORY" "previewbot/branch=$PREVIEW_BRANCH" \
    "previewbot/commit=$PREVIEW_SHA" "previewbot/deployment=${PREVIEW_DEPLOYMENT_ID:-}"

values=()
if [[ -n ${DEPLOY_HELM_VALUES:-} ]]; then
    values=("--values=$DEPLOY_HELM_VALUES")
fi
"${helm[@]}" upgrade --install preview "$chart" --namespace "$namespace" \
    "${values[@]}" --set-string "image.tag=$PREVIEW_SHA" --set-string "ingress.host=$preview_host" \
    --atomic --timeout "${DEPLOY_HELM_TIMEOUT:-10m}"

echo "https://$preview_host"
