#!/usr/bin/env bash
# Tears a preview down: deleting its namespace deletes the release and everything in it, and
# waits until it is gone. Nothing to tear down is not an error.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=examples/kubernetes/common.sh
source "$here/common.sh"

printf 'destroying namespace %s\n' "$namespace"
"${kubectl[@]}" delete namespace "$namespace" --ignore-not-found --wait
