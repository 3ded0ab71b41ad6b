"""The GPU hosts' instance profile: SSM Session Manager (no SSH), image pulls from ECR, the API key from its
store, and read-only access to the S3 prefixes the deployed profiles' weights live under."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.spec.secrets import SecretRef

# AWS managed policies (arn:aws:iam::aws:policy/...): Session Manager's agent, and ECR pulls.
MANAGED_POLICIES = {
    "ssm": "AmazonSSMManagedInstanceCore",
    "ecr": "AmazonEC2ContainerRegistryReadOnly",
}


def service_role(name: str, service: str, policies: dict[str, str], tags: dict[str, str],
                 opts: pulumi.ResourceOptions) -> aws.iam.Role:
    """A role ``service`` (e.g. ec2.amazonaws.com) assumes, with AWS managed policies attached (one
    attachment per key of ``policies``, named ``<name>-<key>``)."""
    assume = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})
    role = aws.iam.Role(name, assume_role_policy=assume, tags=tags, opts=opts)
    for key, policy in policies.items():
        aws.iam.RolePolicyAttachment(f"{name}-{key}", role=role.name,
                                     policy_arn=f"arn:aws:iam::aws:policy/{policy}", opts=opts)
    return role


def secret_statement(ref: SecretRef, region: str, account: str) -> dict[str, Any]:
    """Read of exactly the API key (cloud-init's fetch-api-key.sh reads it at boot)."""
    if ref.source == "aws-ssm-parameter":
        name = ref.name.lstrip("/")
        return {"Effect": "Allow", "Action": ["ssm:GetParameter"],
                "Resource": f"arn:aws:ssm:{region}:{account}:parameter/{name}"}
    # Secrets Manager appends a random 6-character suffix to a secret's ARN: "-??????" matches exactly it.
    arn = (ref.name if ref.name.startswith("arn:")
           else f"arn:aws:secretsmanager:{region}:{account}:secret:{ref.name}-??????")
    return {"Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": arn}


def s3_statements(uris: list[str]) -> list[dict[str, Any]]:
    """GetObject under each s3://bucket/prefix, and ListBucket limited to that prefix (aws s3 sync lists)."""
    statements: list[dict[str, Any]] = []
    for uri in sorted(set(uris)):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        prefix = prefix.rstrip("/")
        statements.append({"Effect": "Allow", "Action": ["s3:GetObject"],
                           "Resource": f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}*"})
        statement: dict[str, Any] = {"Effect": "Allow", "Action": ["s3:ListBucket"],
                                     "Resource": f"arn:aws:s3:::{bucket}"}
        if prefix:
            statement["Condition"] = {"StringLike": {"s3:prefix": [f"{prefix}/*", prefix]}}
        statements.append(statement)
    return statements


def host_policy(api_key: SecretRef, weights_uris: list[str], region: str, account: str) -> str:
    return json.dumps({"Version": "2012-10-17",
                       "Statement": [secret_statement(api_key, region, account), *s3_statements(weights_uris)]})


class GpuHostProfile(pulumi.ComponentResource):
    """``gpufleet:aws:GpuHostProfile``: role, its policies and the instance profile (``profile_arn``)."""

    def __init__(self, name: str, *, api_key: SecretRef, weights_uris: list[str], region: str,
                 tags: dict[str, str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:GpuHostProfile", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = service_role(name, "ec2.amazonaws.com", MANAGED_POLICIES, tags, child)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        aws.iam.RolePolicy(f"{name}-read", role=role.id,
                           policy=account.apply(lambda acc: host_policy(api_key, weights_uris, region, acc)),
                           opts=child)
        profile = aws.iam.InstanceProfile(name, role=role.name, tags=tags, opts=child)
        self.profile_arn = profile.arn
        self.register_outputs({"profileArn": self.profile_arn})
