"""Secrets the program reads at deploy time."""

from __future__ import annotations

import pulumi


def pulumi_config_secret(name: str) -> pulumi.Output[str]:
    """A `pulumi config set --secret` value: "gpufleet:kubeconfig" (namespace:key) or a bare key of the
    project's namespace."""
    namespace, _, key = name.rpartition(":")
    return pulumi.Config(namespace or None).require_secret(key)
