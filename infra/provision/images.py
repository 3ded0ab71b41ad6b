"""The fleet's container images, built by the Pulumi program from ``images/<name>/Dockerfile``.

Every subdirectory of ``images/`` that holds a Dockerfile is one image (``discover_images``). Its tag is
``v<engine version>-<content hash>``: the project's one pinned vLLM version and the first 12 hex characters of
a sha256 over the directory's files, so an unchanged directory gives the same tag on every machine and any
changed byte gives a new one (``image_tag``).

Two modes:

- ``"ecr"`` (AWS stacks): per image an ECR repository (immutable tags, scan on push, encrypted, never
  force-deleted), a lifecycle policy that keeps the newest tagged images, and a pulumi-docker-build ``Image``
  that builds for linux/amd64 and pushes ``<repository url>:<tag>`` with a token from
  ``aws.ecr.get_authorization_token``. ``refs[name]`` is the digest-pinned ``<repository url>@sha256:...``.
- ``"archive"`` (on-prem without registry access): the same build, exported by BuildKit's docker exporter as
  a ``docker load``-able tar archive at ``<archive_dir>/<name>.tar``; nothing is pushed. ``refs[name]`` is the
  local name ``gpufleet-<name>:<tag>`` that ``docker load`` creates, ``archives[name]`` the archive's path.
  On-prem sites that can reach the ECR registry use the ``"ecr"`` mode's refs instead.

How the caller (``infra/program.py``) passes ``refs`` on: the exact reference, never a tag, goes into the EC2
launch templates' user data (the systemd unit's image), the Kubernetes Deployments' ``containers[].image``
and the on-prem Ansible group_vars as ``gpufleet_vllm_image`` (``refs["vllm"]``; ``refs["lb"]`` for the load
balancer). Each ref is an Output of its ``Image``, so anything built from it waits until the image has been
pushed (or written to its archive).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

IMAGES_DIR = Path(__file__).resolve().parents[2] / "images"
DOCKERFILE = "Dockerfile"
HASH_CHARS = 12
# The build arg through which images/vllm/Dockerfile selects its upstream base image (`ARG VLLM_VERSION`).
ENGINE_VERSION_ARG = "VLLM_VERSION"
# ECR keeps this many tagged images per repository. Older ones expire: launch templates and Deployments of
# a rolled-back stack still point at recent digests, and a stack that is 10 builds behind is rebuilt anyway.
KEEP_TAGGED_IMAGES = 10

Mode = Literal["ecr", "archive"]


def content_hash(directory: Path) -> str:
    """sha256 over the directory's files, as (relative path, NUL, bytes) in path order; first 12 hex chars.
    The same files give the same hash on every machine and in every checkout."""
    h = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    for path in files:
        relative = path.relative_to(directory).as_posix()
        # Each file's own digest after its name keeps (name, bytes) boundaries unambiguous.
        h.update(relative.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:HASH_CHARS]


def image_tag(name: str, engine_version: str, directory: Path) -> str:
    """``v<engine version>-<content hash>``, e.g. ``v0.33.0-3f2a9c41d0be``.

    The engine version leads the tag because it is what an operator looks for (which vLLM runs where) and it
    is a build arg, not a byte of the directory: the same Dockerfile built for another vLLM version is another
    image. The content hash makes the tag change with every edit, as the repositories' tags are immutable."""
    if not (directory / DOCKERFILE).is_file():
        raise ValueError(f"image {name!r}: no {DOCKERFILE} in {directory}")
    return f"v{engine_version}-{content_hash(directory)}"


def discover_images(images_dir: Path) -> list[str]:
    """Names of the subdirectories of ``images_dir`` that hold a Dockerfile, sorted."""
    return sorted(p.name for p in images_dir.iterdir() if p.is_dir() and (p / DOCKERFILE).is_file())


def declares_arg(dockerfile: Path, arg: str) -> bool:
    """Whether the Dockerfile declares ``ARG <arg>`` (instructions are case-insensitive, Dockerfile reference)."""
    pattern = re.compile(rf"^\s*ARG\s+{re.escape(arg)}(?:=|\s|$)", re.IGNORECASE | re.MULTILINE)
    return bool(pattern.search(dockerfile.read_text(encoding="utf-8")))


def lifecycle_policy(keep: int) -> str:
    """ECR lifecycle policy: expire tagged images beyond the newest ``keep``. Untagged images are left alone:
    with BuildKit's default provenance attestations, a pushed image is an index whose attestation manifests
    are untagged, and expiring them would break the index."""
    rule = {
        "rulePriority": 1,
        "description": f"keep the newest {keep} gpufleet images",
        # Every tag of image_tag() starts with "v".
        "selection": {"tagStatus": "tagged", "tagPrefixList": ["v"], "countType": "imageCountMoreThan",
                      "countNumber": keep},
        "action": {"type": "expire"},
    }
    return json.dumps({"rules": [rule]})


def registry_host(repository_url: str) -> str:
    """``123456789012.dkr.ecr.us-east-1.amazonaws.com/repo`` -> the registry's host, what docker logs in to."""
    return repository_url.split("/", 1)[0]


def build_args(directory: Path, engine_version: str) -> dict[str, str]:
    """The engine version as a build arg, for the Dockerfiles that take it (images/vllm); none otherwise."""
    if declares_arg(directory / DOCKERFILE, ENGINE_VERSION_ARG):
        return {ENGINE_VERSION_ARG: engine_version}
    return {}


@dataclass(frozen=True)
class BuildSpec:
    """What both modes build: the image directory (context and Dockerfile), its tag and build args."""

    directory: Path
    tag: str
    args: dict[str, str]


class Images(pulumi.ComponentResource):
    """``gpufleet:images:Images``: one built image per directory of ``images_dir``, pushed to ECR or exported
    as an archive. ``refs`` maps each image's name to the exact reference to deploy."""

    def __init__(self, name: str, *, stack: str, engine_version: str, mode: Mode,
                 images_dir: Path = IMAGES_DIR, tags: dict[str, str] | None = None,
                 archive_dir: Path | None = None, kms_key_arn: str | None = None,
                 only: Sequence[str] | None = None, opts: pulumi.ResourceOptions | None = None) -> None:
        """``only``: build just these images (on-prem runs Debian's nginx, so it needs images/vllm alone)."""
        super().__init__("gpufleet:images:Images", name, None, opts)
        self.refs: dict[str, pulumi.Output[str]] = {}
        self.archives: dict[str, str] = {}
        self.image_tags: dict[str, str] = {}
        for image in discover_images(images_dir):
            if only is not None and image not in only:
                continue
            directory = images_dir / image
            build = BuildSpec(directory, image_tag(image, engine_version, directory),
                              build_args(directory, engine_version))
            self.image_tags[image] = build.tag
            resource_name = f"{name}-{image}"
            if mode == "ecr":
                repository_name = f"gpufleet-{stack}-{image}".lower()  # ECR names are lowercase
                self.refs[image] = self._ecr_image(resource_name, repository_name, build, tags or {}, kms_key_arn)
            elif archive_dir is not None:
                # The exporter writes the file; its directory (e.g. out/<stack>/images) must exist.
                archive_dir.mkdir(parents=True, exist_ok=True)
                archive = archive_dir / f"{image}.tar"
                self.archives[image] = str(archive)
                self.refs[image] = self._archive_image(resource_name, f"gpufleet-{image}:{build.tag}", build, archive)
            else:
                raise ValueError("archive mode needs archive_dir (e.g. out/<stack>/images)")
        self.register_outputs({"refs": self.refs, "archives": self.archives})

    def _ecr_image(self, resource_name: str, repository_name: str, build: BuildSpec, tags: dict[str, str],
                   kms_key_arn: str | None) -> pulumi.Output[str]:
        child = pulumi.ResourceOptions(parent=self)
        repository = aws.ecr.Repository(
            resource_name,
            name=repository_name,
            # A pushed tag never moves: a tag names exactly one build (image_tag's content hash).
            image_tag_mutability="IMMUTABLE",
            image_scanning_configuration={"scan_on_push": True},
            encryption_configurations=[
                {"encryption_type": "KMS", "kms_key": kms_key_arn} if kms_key_arn
                else {"encryption_type": "AES256"}],
            # Destroying the stack fails while images remain, rather than deleting what hosts may still pull.
            force_delete=False,
            tags=tags,
            opts=child,
        )
        aws.ecr.LifecyclePolicy(resource_name, repository=repository.name,
                                policy=lifecycle_policy(KEEP_TAGGED_IMAGES), opts=child)
        token = aws.ecr.get_authorization_token_output(registry_id=repository.registry_id,
                                                       opts=pulumi.InvokeOptions(parent=self))
        image = self._image(
            resource_name, build, push=True,
            tags=[repository.repository_url.apply(lambda url: f"{url}:{build.tag}")],
            registries=[docker_build.RegistryArgs(
                address=repository.repository_url.apply(registry_host),
                username=token.user_name,
                password=pulumi.Output.secret(token.password),
            )],
        )
        # `digest` is the pushed manifest's digest. Not `ref`: pulumi-docker-build documents `ref` as a
        # convenience "not guaranteed to be stable" and points to `digest` for references consumed downstream
        # (docstring of Image.ref, pulumi-docker-build 0.0.22).
        return pulumi.Output.concat(repository.repository_url, "@", image.digest)

    def _archive_image(self, resource_name: str, local_name: str, build: BuildSpec,
                       archive: Path) -> pulumi.Output[str]:
        image = self._image(
            resource_name, build, push=False,
            # The tag is the name `docker load` gives the image on the host.
            tags=[local_name],
            # BuildKit's docker exporter with tar=true writes the `docker save` layout (`docker load -i` reads it).
            exports=[docker_build.ExportArgs(docker=docker_build.ExportDockerArgs(dest=str(archive), tar=True))],
        )
        # The local name, as an Output of the Image: whatever is built from it (the playbook's command) waits
        # until the archive is written.
        return image.ref.apply(lambda _ref: local_name)

    def _image(self, resource_name: str, build: BuildSpec, *, push: bool, tags: Sequence[pulumi.Input[str]],
               registries: Sequence[docker_build.RegistryArgs] | None = None,
               exports: Sequence[docker_build.ExportArgs] | None = None) -> docker_build.Image:
        return docker_build.Image(
            resource_name,
            context=docker_build.BuildContextArgs(location=str(build.directory)),
            dockerfile=docker_build.DockerfileArgs(location=str(build.directory / DOCKERFILE)),
            # One platform, the GPU hosts' x86_64: a multi-platform build would pull the multi-GB vLLM base
            # once per platform for hosts that do not exist.
            platforms=[docker_build.Platform.LINUX_AMD64],
            build_args=build.args,
            # A preview (every pull request) does not pull the multi-GB vLLM base to build an image it would
            # not push; `pulumi up` builds it.
            build_on_preview=False,
            push=push,
            tags=tags,
            registries=registries,
            exports=exports,
            # No registry cache (cache_to type=registry): it re-pushes one fixed cache tag, which an immutable
            # repository rejects. Rebuilds use the builder's local cache; most of the vLLM image is its upstream
            # base, pulled either way.
            opts=pulumi.ResourceOptions(parent=self),
        )
