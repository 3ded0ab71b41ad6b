"""``gpufleet:aws:ConfigStore``: where the LB and monitoring hosts get their configuration
(infra/hostagent/layout.py).

- A private S3 bucket: every public access blocked, objects owned by the bucket owner (no ACLs), encrypted
  at rest (SSE-S3 with bucket keys), TLS required by policy, versioned with noncurrent versions expiring
  after :data:`NONCURRENT_DAYS` (a replaced bundle stays recoverable for a while, then costs nothing).
  ``force_destroy``: everything in it is rebuilt from Git by ``pulumi up``, so ``pulumi destroy`` may empty it.
- The bundle as one object, its key the content's sha256 (``layout.bundle_key``): a changed render is a new
  object, created before the pointer moves to it, and the old one is deleted only after.
- The SSM parameter ``layout.bundle_parameter(stack)`` with the pointer (bucket, key, sha256) the hosts poll.
"""

from __future__ import annotations

import json
import re

import pulumi
import pulumi_aws as aws

from infra.hostagent.layout import bundle_parameter
from infra.provision.aws.bundle import Bundle

NONCURRENT_DAYS = 30
BUCKET_PREFIX_MAX = 37  # S3 bucket_prefix limit (the provider appends a unique suffix up to 63 characters)


def bucket_prefix(stack: str) -> str:
    """A valid S3 name prefix from the stack name (lower case, no underscores or dots)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", stack.lower()).strip("-")
    return f"gpufleet-{cleaned}"[: BUCKET_PREFIX_MAX - 8].rstrip("-") + "-config-"


def tls_only_policy(bucket_arn: str) -> str:
    """Deny every request that is not over TLS (AWS Security Hub control S3.5)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})


class ConfigStore(pulumi.ComponentResource):
    """``bucket``, ``bundle_object``, ``parameter``."""

    def __init__(self, name: str, *, stack: str, bundle: Bundle, tags: dict[str, str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpufleet:aws:ConfigStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = aws.s3.Bucket(name, bucket_prefix=bucket_prefix(stack), force_destroy=True, tags=tags,
                                    opts=child)
        after_bucket = pulumi.ResourceOptions(parent=self, depends_on=[self.bucket])
        block = aws.s3.BucketPublicAccessBlock(name, bucket=self.bucket.id, block_public_acls=True,
                                               block_public_policy=True, ignore_public_acls=True,
                                               restrict_public_buckets=True, opts=after_bucket)
        aws.s3.BucketOwnershipControls(name, bucket=self.bucket.id, rule=aws.s3.BucketOwnershipControlsRuleArgs(
            object_ownership="BucketOwnerEnforced"), opts=after_bucket)
        aws.s3.BucketServerSideEncryptionConfiguration(
            name, bucket=self.bucket.id,
            rules=[aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                apply_server_side_encryption_by_default=aws.s3.
                BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                    sse_algorithm="AES256"),
                bucket_key_enabled=True)],
            opts=after_bucket)
        versioning = aws.s3.BucketVersioning(
            name, bucket=self.bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=after_bucket)
        aws.s3.BucketLifecycleConfiguration(
            name, bucket=self.bucket.id,
            rules=[aws.s3.BucketLifecycleConfigurationRuleArgs(
                id="expire-replaced-bundles", status="Enabled",
                filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                    noncurrent_days=NONCURRENT_DAYS))],
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]))
        # The public access block first: a bucket policy is refused while a public-policy check is pending.
        aws.s3.BucketPolicy(name, bucket=self.bucket.id, policy=self.bucket.arn.apply(tls_only_policy),
                            opts=pulumi.ResourceOptions(parent=self, depends_on=[block]))
        self.bundle_object = aws.s3.BucketObjectv2(
            f"{name}-bundle", bucket=self.bucket.id, key=bundle.key, source=pulumi.FileAsset(str(bundle.path)),
            content_type="application/gzip", tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[versioning]))
        pointer = pulumi.Output.all(self.bucket.bucket, self.bundle_object.key).apply(
            lambda values: json.dumps({"bucket": values[0], "key": values[1], "sha256": bundle.sha256},
                                      sort_keys=True))
        self.parameter = aws.ssm.Parameter(
            # insecure_value: `value` is always a Pulumi secret, which would hide the pointer (no secret in
            # it) from `pulumi preview` diffs and stack outputs.
            name, name=bundle_parameter(stack), type="String", insecure_value=pointer,
            description=f"gpufleet {stack}: the config bundle the LB and monitoring hosts converge to",
            tags=tags, opts=child)
        self.register_outputs({"bucket": self.bucket.bucket, "parameter": self.parameter.name,
                               "bundleSha256": bundle.sha256})
