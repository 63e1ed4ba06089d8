# shellcheck shell=bash disable=SC2034  # the names are for deploy.sh and destroy.sh
# Shared by deploy.sh and destroy.sh: checks the inputs and names the preview, the same way for
# both, so a redeploy updates the project the last deploy made and destroy finds it.
# Every value that goes into the remote shell's command line is checked against a safe
# alphabet first; values that are not (the branch) never go there.

die() { printf '%s\n' "$*" >&2; exit 64; }

[[ ${PREVIEW_REPOSITORY:-} =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]] || die "PREVIEW_REPOSITORY must be owner/repo"
[[ ${PREVIEW_PR_NUMBER:-} =~ ^[1-9][0-9]*$ ]] || die "PREVIEW_PR_NUMBER must be a number"
environment=${PREVIEW_ENVIRONMENT:-preview}
[[ $environment =~ ^[a-z][a-z0-9-]{0,19}$ ]] || die "PREVIEW_ENVIRONMENT is not an environment name"
host=${DEPLOY_SSH_HOST:?set DEPLOY_SSH_HOST to the VM, user@host}
[[ $host =~ ^[A-Za-z0-9_.@-]+$ && $host != -* ]] || die "DEPLOY_SSH_HOST must be user@host or host"
domain=${DEPLOY_DOMAIN:?set DEPLOY_DOMAIN to the domain whose subdomains reach the VM}
[[ $domain =~ ^[a-z0-9.-]+$ ]] || die "DEPLOY_DOMAIN must be a DNS name"
base_dir=${DEPLOY_DIR:-previews}
[[ $base_dir =~ ^[A-Za-z0-9_./-]+$ ]] || die "DEPLOY_DIR must be a plain path"

# preview-7-octo-app: the environment and pull request, then the repository, so that two
# repositories sharing the VM never share a project. One DNS label (at most 63 characters).
slug=$(printf '%s' "$PREVIEW_REPOSITORY" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-')
slug=${slug#-}
project="$environment-$PREVIEW_PR_NUMBER-${slug%-}"
project=${project:0:63}
project=${project%-}
project_dir="$base_dir/$project"
preview_host="$project.$domain"
ssh_options=(-o BatchMode=yes)
