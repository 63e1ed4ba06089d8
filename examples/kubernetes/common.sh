# shellcheck shell=bash disable=SC2034  # the names are for deploy.sh and destroy.sh
# Shared by deploy.sh and destroy.sh: checks the inputs and names the preview's namespace the
# same way for both, so a redeploy upgrades the release the last deploy made and destroy finds it.

die() { printf '%s\n' "$*" >&2; exit 64; }

[[ ${PREVIEW_REPOSITORY:-} =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] || die "PREVIEW_REPOSITORY must be owner/repo"
[[ ${PREVIEW_PR_NUMBER:-} =~ ^[1-9][0-9]*$ ]] || die "PREVIEW_PR_NUMBER must be a number"
environment=${PREVIEW_ENVIRONMENT:-preview}
[[ $environment =~ ^[a-z][a-z0-9-]{0,19}$ ]] || die "PREVIEW_ENVIRONMENT is not an environment name"

# preview-7-octo-app: the environment and pull request, then the repository, so that two
# repositories sharing the cluster never share a namespace. One DNS label (at most 63 characters).
slug=$(printf '%s' "$PREVIEW_REPOSITORY" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-')
slug=${slug#-}
namespace="$environment-$PREVIEW_PR_NUMBER-${slug%-}"
namespace=${namespace:0:63}
namespace=${namespace%-}

kubectl=(kubectl)
helm=(helm)
if [[ -n ${DEPLOY_KUBE_CONTEXT:-} ]]; then
    kubectl+=("--context=$DEPLOY_KUBE_CONTEXT")
    helm+=("--kube-context=$DEPLOY_KUBE_CONTEXT")
fi
