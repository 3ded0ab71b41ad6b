#!/usr/bin/env bash
# The stacks deploy.yml runs `pulumi up` for, as a JSON matrix on stdout: [{"stack": ..., "target": ...}].
# With STACK set (a manual run): that stack. Otherwise the stacks changed since BASE (the last deployed
# commit): the ones whose plan or render differs, every one when the program's code changed (`gpufleet diff
# --json`'s "preview"). Without a usable base (the first deploy, a base lost to a force push) every stack.
# env: GPUFLEET (the gpufleet command), STACK, BASE (a commit; empty or all zeros for none).
set -euo pipefail

gpufleet="${GPUFLEET:-gpufleet}"
summary="$(mktemp)"
trap 'rm -f "$summary"' EXIT

if [[ -n "${STACK:-}" ]]; then
    "$gpufleet" plan -s "$STACK" --json >"$summary"
    jq -c '[{stack, target}]' "$summary"
    exit 0
fi

base="${BASE:-}"
if [[ -z "$base" || "$base" =~ ^0+$ ]] || ! git cat-file -e "${base}^{commit}" 2>/dev/null; then
    echo "deploy-matrix: no base commit (${base:-none}): every stack" >&2
    "$gpufleet" plan --all --json >"$summary"
    # plan --json prints one object for a single stack, an array for several.
    jq -c '[(if type == "array" then .[] else . end) | {stack, target}]' "$summary"
    exit 0
fi
"$gpufleet" diff --base "$base" --json "$summary" -o /dev/null
jq -c .preview "$summary"
