#!/usr/bin/env bash
# Deploys a pull request's commit with docker compose on a VM, over SSH: previewbot's command
# provisioner runs it (PREVIEW_DEPLOY_COMMAND). A redeploy updates the same compose project in
# place. The last line it prints is the preview's URL.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=examples/compose-over-ssh/common.sh
source "$here/common.sh"

# The commit when previewbot knows it (always, with the GitHub App); else the branch's tip.
if [[ -n ${PREVIEW_SHA:-} ]]; then
    [[ $PREVIEW_SHA =~ ^[0-9a-f]{40}$ ]] || die "PREVIEW_SHA must be a commit id"
    ref=$PREVIEW_SHA
else
    ref="refs/heads/$PREVIEW_BRANCH"
fi
source_url="${DEPLOY_GIT_URL_PREFIX:-https://github.com/}$PREVIEW_REPOSITORY.git"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/tree"
printf 'deploying %s (branch %s) of %s as %s on %s\n' "$ref" "$PREVIEW_BRANCH" "$PREVIEW_REPOSITORY" "$project" "$host"

# Only the one commit, no history: a fresh shallow fetch per deploy, so deploys of the same
# repository running at once share nothing on this machine.
git init --quiet --bare "$work/source.git"
git --git-dir="$work/source.git" fetch --quiet --depth=1 -- "$source_url" "$ref"
git --git-dir="$work/source.git" archive --format=tar FETCH_HEAD | tar -x -C "$work/tree"

ssh "${ssh_options[@]}" -- "$host" "mkdir -p '$project_dir'"
# --delete: files the commit removed leave the VM too, so the project is exactly the commit.
rsync -a --delete -e "ssh -o BatchMode=yes" -- "$work/tree/" "$host:$project_dir/"
# The compose file routes PREVIEW_HOST to its web service (see README.md).
ssh "${ssh_options[@]}" -- "$host" \
    "cd '$project_dir' && PREVIEW_HOST='$preview_host' docker compose -p '$project' up -d --build --remove-orphans"

echo "https://$preview_host"
