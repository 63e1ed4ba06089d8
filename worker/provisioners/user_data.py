"""The user data an EC2 preview boots with: the default cloud-init script, or the operator's
template (PREVIEW_EC2_USER_DATA), rendered for one deployment. Pure.

Values reach the script only shell-quoted, so a branch called `x';reboot;'` is text. The VM
gets the commit's source as a short-lived download link and never a token of the bot: the
link is all it needs, and it expires minutes after the instance boots.
"""

from __future__ import annotations

import re
import shlex

from bot.config import USER_DATA_PLACEHOLDER

from . import ProvisionError, ProvisionRequest

# EC2 refuses user data over 16 KB (before base64).
MAX_USER_DATA_BYTES = 16 * 1024
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Run by cloud-init as root at first boot; its output lands in /var/log/cloud-init-output.log.
# PREVIEW_APP_DIR lets the script run elsewhere than /srv/preview (its tests do).
DEFAULT_USER_DATA = """#!/bin/bash
set -euo pipefail
repository={{repository}} pr={{pr}} environment={{environment}} sha={{sha}} deployment={{deployment_id}}
echo "previewbot: $repository #$pr ($environment), commit $sha, deployment $deployment"
source_url={{source_url}}
start={{start}}
app_dir="${PREVIEW_APP_DIR:-/srv/preview}"
{{vars}}
mkdir -p "$app_dir"
cd "$app_dir"
if [ -n "$source_url" ]; then
  echo "previewbot: downloading the source archive"
  curl --fail --silent --show-error --location --retry 5 --output "$app_dir/.source.tar.gz" "$source_url"
  tar -xzf "$app_dir/.source.tar.gz" --strip-components=1 -C "$app_dir"
  rm -f "$app_dir/.source.tar.gz"
else
  echo "previewbot: no source archive (local mode); starting in an empty directory"
fi
if [ -n "$start" ]; then
  echo "previewbot: running the repository's start command"
  exec bash -c "$start"
fi
for compose_file in compose.yaml compose.yml docker-compose.yaml docker-compose.yml; do
  if [ -f "$compose_file" ]; then
    echo "previewbot: docker compose up -d ($compose_file)"
    exec docker compose -f "$compose_file" up -d
  fi
done
echo "previewbot: nothing to start: add a compose file or a start command to .github/preview.yml" >&2
exit 1
"""


def render_user_data(template: str, request: ProvisionRequest, source_url: str | None) -> str:
    """`template` with each `{{name}}` replaced by its shell-quoted value (`{{vars}}` by one
    `export NAME=value` line per variable)."""
    values = {
        "source_url": source_url or "",
        "start": request.start or "",
        "repository": request.repository,
        "pr": str(request.pr_number),
        "environment": request.environment,
        "branch": request.branch,
        "sha": request.sha or "",
        "deployment_id": request.deployment_id,
    }
    quoted = {name: shlex.quote(value) for name, value in values.items()}
    quoted["vars"] = _exports(request.vars)
    rendered = USER_DATA_PLACEHOLDER.sub(lambda m: quoted[m.group(1)], template)
    if len(rendered.encode()) > MAX_USER_DATA_BYTES:
        raise ProvisionError(f"The user data is {len(rendered.encode())} bytes; EC2 takes at most {MAX_USER_DATA_BYTES}.")
    return rendered


def _exports(variables: dict[str, str]) -> str:
    bad = [name for name in variables if not VARIABLE_NAME.fullmatch(name)]
    if bad:
        raise ProvisionError(f"vars: {bad[0]!r} is not a variable name (letters, digits and _, not starting with a digit)")
    return "\n".join(f"export {name}={shlex.quote(str(value))}" for name, value in variables.items())
