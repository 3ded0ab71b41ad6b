"""EKS Pod Identity: an IAM role a Kubernetes service account assumes, without IRSA's OIDC provider or
service-account annotation.

The EKS Pod Identity Agent (the cluster add-on :data:`POD_IDENTITY_ADDON`) serves the credentials to the
pods of the associated service account; an association alone does nothing on a cluster without it.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from infra.provision.aws.iam import StatementsOf, policy_document

POD_IDENTITY_ADDON = "eks-pod-identity-agent"
POD_IDENTITY_PRINCIPAL = "pods.eks.amazonaws.com"


def pod_identity_trust(cluster_name: str, namespace: str, service_account: str) -> str:
    """The trust policy of the AWS EKS user guide, "Create IAM role with trust policy required by EKS Pod
    Identity": the service principal pods.eks.amazonaws.com with sts:AssumeRole, and sts:TagSession for the
    session tags it sends. The guide's conditions on those tags limit the role to this cluster's service
    account, so an association made for another cluster or service account cannot use it (they need the
    association's session tags, which are on by default: do not set ``disable_session_tags``)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Principal": {"Service": POD_IDENTITY_PRINCIPAL},
        "Action": ["sts:AssumeRole", "sts:TagSession"],
        "Condition": {"StringEquals": {
            "aws:RequestTag/eks-cluster-name": cluster_name,
            "aws:RequestTag/kubernetes-namespace": namespace,
            "aws:RequestTag/kubernetes-service-account": service_account,
        }},
    }]})


class PodIdentityRole(pulumi.ComponentResource):
    """``gpufleet:aws:PodIdentityRole``: a role with one inline policy, associated with ``namespace``/
    ``service_account`` of the cluster (``role_arn``; ``association`` and ``policy`` for ``depends_on``: the
    pods get credentials once both exist). ``statements`` gets the account id (known at deploy time)."""

    def __init__(self, name: str, *, cluster_name: pulumi.Input[str], namespace: str, service_account: str,
                 statements: StatementsOf, tags: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:PodIdentityRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        trust = pulumi.Output.from_input(cluster_name).apply(
            lambda cluster: pod_identity_trust(cluster, namespace, service_account))
        role = aws.iam.Role(name, assume_role_policy=trust, tags=tags, opts=child)
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        self.policy = aws.iam.RolePolicy(f"{name}-policy", role=role.id,
                                         policy=account.apply(statements).apply(policy_document), opts=child)
        self.association = aws.eks.PodIdentityAssociation(
            f"{name}-association", cluster_name=cluster_name, namespace=namespace,
            service_account=service_account, role_arn=role.arn, tags=tags, opts=child)
        self.role_arn: pulumi.Output[str] = role.arn
        self.register_outputs({"roleArn": self.role_arn})
