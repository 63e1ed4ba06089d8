#!/usr/bin/env bash
# Tears a preview down: stops the compose project, removes its containers, networks and volumes,
# then its files on the VM. Nothing to tear down is not an error.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=examples/compose-over-ssh/common.sh
source "$here/common.sh"

printf 'destroying %s on %s\n' "$project" "$host"
ssh "${ssh_options[@]}" -- "$host" \
    "if [ -d '$project_dir' ]; then (cd '$project_dir' && docker compose -p '$project' down -v --remove-orphans) && rm -rf '$project_dir'; fi"
