"""Instance profiles of the aws-ec2 hosts, each with exactly what its host reads.

- GPU hosts: SSM Session Manager (no SSH), image pulls from ECR, the API key from its store, and read-only
  access to the S3 prefixes the deployed profiles' weights live under.
- LB and monitoring hosts: SSM Session Manager, their config bundle (parameter + objects), the instance list
  for discovery, and their own secrets (the LB: the API key and TLS key; monitoring: the receivers')."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.hostagent.layout import BUNDLES_PREFIX, bundle_parameter
from infra.spec.secrets import SecretRef

# AWS managed policies (arn:aws:iam::aws:policy/...): Session Manager's agent, and ECR pulls.
SSM_CORE = {"ssm": "AmazonSSMManagedInstanceCore"}
GPU_HOST_POLICIES = {**SSM_CORE, "ecr": "AmazonEC2ContainerRegistryReadOnly"}


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


def policy_document(statements: list[dict[str, Any]]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def gpu_host_statements(api_key: SecretRef, weights_uris: list[str], region: str, account: str) -> list[dict[str, Any]]:
    """GPU hosts: the API key (cloud-init's fetch-api-key.sh) and the weights' S3 prefixes."""
    return [secret_statement(api_key, region, account), *s3_statements(weights_uris)]


def bundle_statements(stack: str, region: str, account: str, bucket_arn: str) -> list[dict[str, Any]]:
    """LB and monitoring hosts: the pointer to the config bundle and the bundles themselves (hostagent.sync),
    and the instance list discovery reads. DescribeInstances supports no resource-level restriction (Service
    Authorization Reference, Amazon EC2: "Resource types: *"), so its Resource is "*": it reveals metadata,
    never access."""
    parameter = bundle_parameter(stack).lstrip("/")
    return [
        {"Effect": "Allow", "Action": ["ssm:GetParameter"],
         "Resource": f"arn:aws:ssm:{region}:{account}:parameter/{parameter}"},
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"{bucket_arn}/{BUNDLES_PREFIX}*"},
        {"Effect": "Allow", "Action": ["ec2:DescribeInstances"], "Resource": "*"},
    ]


def secret_statements(refs: list[SecretRef], region: str, account: str) -> list[dict[str, Any]]:
    return [secret_statement(ref, region, account) for ref in refs]


StatementsOf = Callable[[str], pulumi.Input[list[dict[str, Any]]]]


class HostProfile(pulumi.ComponentResource):
    """``gpufleet:aws:HostProfile``: an EC2 role with AWS managed policies and one inline policy, and its
    instance profile (``profile_arn``, ``profile_name``). ``statements`` gets the account id (known at deploy time)."""

    def __init__(self, name: str, *, managed_policies: dict[str, str], statements: StatementsOf,
                 tags: dict[str, str], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:HostProfile", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = service_role(name, "ec2.amazonaws.com", managed_policies, tags, child)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        aws.iam.RolePolicy(f"{name}-read", role=role.id,
                           policy=account.apply(statements).apply(policy_document), opts=child)
        profile = aws.iam.InstanceProfile(name, role=role.name, tags=tags, opts=child)
        self.profile_arn = profile.arn
        self.profile_name = profile.name
        self.register_outputs({"profileArn": self.profile_arn})
