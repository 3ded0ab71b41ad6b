#!/usr/bin/env bash
# The pull request's cost gate, from `gpufleet diff --json` (format gpufleet-diff/1).
# Fails when a stack cannot be deployed as changed (blocking), or when a stack's or the fleet's $/month rises
# more than the diff's --max-increase-percent and the PR does not carry the approval label.
# Usage: cost-gate.sh DIFF_JSON   env: APPROVED=true|false (the label is on the PR), APPROVAL_LABEL (its name)
set -euo pipefail

summary="${1:?usage: cost-gate.sh DIFF_JSON}"
approved="${APPROVED:-false}"
label="${APPROVAL_LABEL:-cost-increase-approved}"

[[ "$(jq -r .format "$summary")" == "gpufleet-diff/1" ]] || {
    echo "::error::$summary is not a gpufleet diff summary (format gpufleet-diff/1)"
    exit 1
}

status=0
blocking="$(jq -r '.total.blocking | join(", ")' "$summary")"
if [[ -n "$blocking" ]]; then
    echo "::error::cannot be deployed as changed: $blocking (the diff comment says why)"
    status=1
fi

if [[ "$(jq -r .total.exceeds_max_increase "$summary")" == "true" ]]; then
    # The cost-increase warnings name the stack (or the fleet) and the percentage.
    reasons="$(jq -r '[.total.warnings[], (.stacks[].warnings[])] | map(select(.kind == "cost-increase") | .message) | join("; ")' "$summary")"
    if [[ "$approved" == "true" ]]; then
        echo "::notice::cost increase approved by the '$label' label: $reasons"
    else
        echo "::error::$reasons. Add the '$label' label to approve the increase."
        status=1
    fi
fi

delta="$(jq -r '.total.delta_percent // "n/a"' "$summary")"
echo "fleet \$/month: $(jq -r .total.monthly_usd_before "$summary") -> $(jq -r .total.monthly_usd_after "$summary") (${delta}%)"
exit "$status"
