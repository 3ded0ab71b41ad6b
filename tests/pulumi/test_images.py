"""The Images component under mocks: per directory of images/ one ECR repository, lifecycle policy and
docker-build Image (or, on-prem, an Image exported to a tar archive), tagged with the pinned vLLM version and
the directory's content hash; refs resolve to the digest-pinned reference. The Dockerfiles the Images would
build are linted with the real hadolint."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest

from infra.provision.images import Images, content_hash, discover_images, image_tag
from infra.render.vllm import VLLM_VERSION
from tests.pulumi.mocks import RecordingMocks, ensure_event_loop, run_program
from tests.tooling import require_tool

ROOT = Path(__file__).resolve().parents[2]
STACK = "dev"
ACCOUNT = "123456789012"
REGISTRY = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com"
REPOSITORY = "aws:ecr/repository:Repository"
LIFECYCLE = "aws:ecr/lifecyclePolicy:LifecyclePolicy"
IMAGE = "docker-build:index:Image"
TOKEN = "aws:ecr/getAuthorizationToken:getAuthorizationToken"
IMAGES = ["lb", "vllm"]
# How mocks see a secret input: {SIG_KEY: SECRET_SIG, "value": ...} (pulumi.runtime.rpc's special signatures).
SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def fake_digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


@dataclass
class RegistryMocks(RecordingMocks):
    """RecordingMocks whose ECR repositories, images and token calls answer as the providers do (camelCase
    output keys): a repository URL in a fake account, a digest per pushed image, a token document."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        resource_id, outputs = super().new_resource(args)
        if args.typ == REPOSITORY:
            name = args.inputs["name"]
            outputs |= {"repositoryUrl": f"{REGISTRY}/{name}", "registryId": ACCOUNT,
                        "arn": f"arn:aws:ecr:us-east-1:{ACCOUNT}:repository/{name}"}
        if args.typ == IMAGE:
            digest = fake_digest(args.name)
            tag = args.inputs["tags"][0]
            # pulumi-docker-build: `ref` is "<tag>@<digest>" when pushed, otherwise one of the tags.
            outputs |= {"digest": digest, "ref": f"{tag}@{digest}" if args.inputs["push"] else tag}
        return resource_id, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        self.calls.append((args.token, dict(args.args)))
        if args.token == TOKEN:
            return {
                "authorizationToken": "QVdTOmZha2UtcGFzc3dvcmQ=",  # base64("AWS:fake-password")
                "expiresAt": "2030-01-01T12:00:00Z",
                "id": "us-east-1",
                "password": "fake-password",
                "proxyEndpoint": f"https://{REGISTRY}",
                "region": "us-east-1",
                "registryId": args.args.get("registryId", ACCOUNT),
                "userName": "AWS",
            }, []  # a tuple's second item is the check failures; Pulumi's mock server iterates it
        return {}, []


@dataclass
class Built:
    mocks: RegistryMocks
    refs: dict[str, str]
    tags: dict[str, str]
    images_dir: Path


def build(images_dir: Path = ROOT / "images", **kwargs: Any) -> Built:
    """Runs the component as a program under mocks and resolves its refs."""
    ensure_event_loop()
    mocks = RegistryMocks()
    pulumi.runtime.set_mocks(mocks, project="gpufleet", stack=STACK, preview=False)
    resolved: dict[str, str] = {}

    def program() -> Images:
        kwargs.setdefault("mode", "ecr")
        images = Images(STACK, stack=STACK, engine_version=VLLM_VERSION, images_dir=images_dir,
                        tags={"gpufleet:stack": STACK}, **kwargs)
        for name, ref in images.refs.items():
            ref.apply(lambda value, name=name: resolved.__setitem__(name, value))
        return images

    images = run_program(program)
    return Built(mocks, resolved, images.image_tags, images_dir)


def by_name(mocks: RecordingMocks, typ: str) -> dict[str, dict[str, Any]]:
    return {r.name.removeprefix(f"{STACK}-"): r.inputs for r in mocks.of_type(typ)}


@pytest.fixture(scope="module")
def ecr() -> Built:
    return build()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, Path]:
    out = tmp_path_factory.mktemp("out") / STACK / "images"
    return build(mode="archive", archive_dir=out), out


def test_discovers_the_image_directories() -> None:
    assert discover_images(ROOT / "images") == IMAGES


def test_one_repository_lifecycle_policy_and_image_per_directory(ecr: Built) -> None:
    # Registration order of the children is the event loop's, so compare as sets.
    assert ecr.mocks.resources[0].type == "gpufleet:images:Images"
    assert {(r.type, r.name) for r in ecr.mocks.resources[1:]} == {
        (typ, f"{STACK}-{image}") for image in IMAGES for typ in (REPOSITORY, LIFECYCLE, IMAGE)}
    assert len(ecr.mocks.resources) == 1 + 3 * len(IMAGES)


def test_repository_settings(ecr: Built) -> None:
    for image, inputs in by_name(ecr.mocks, REPOSITORY).items():
        assert inputs["name"] == f"gpufleet-{STACK}-{image}"
        assert inputs["imageTagMutability"] == "IMMUTABLE"
        assert inputs["imageScanningConfiguration"] == {"scanOnPush": True}
        assert inputs["encryptionConfigurations"] == [{"encryptionType": "AES256"}]
        assert inputs["forceDelete"] is False
        assert inputs["tags"] == {"gpufleet:stack": STACK}


def test_kms_key_encrypts_the_repositories() -> None:
    key = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    built = build(kms_key_arn=key)
    for inputs in by_name(built.mocks, REPOSITORY).values():
        assert inputs["encryptionConfigurations"] == [{"encryptionType": "KMS", "kmsKey": key}]


def test_lifecycle_policy_keeps_the_newest_tagged_images(ecr: Built) -> None:
    for image, inputs in by_name(ecr.mocks, LIFECYCLE).items():
        assert inputs["repository"] == f"gpufleet-{STACK}-{image}"
        [rule] = json.loads(inputs["policy"])["rules"]
        assert rule["selection"] == {"tagStatus": "tagged", "tagPrefixList": ["v"],
                                     "countType": "imageCountMoreThan", "countNumber": 10}
        assert rule["action"] == {"type": "expire"}
        assert ecr.tags[image].startswith(tuple(rule["selection"]["tagPrefixList"]))


def test_image_builds_the_directory_and_pushes_the_tag(ecr: Built) -> None:
    images_dir = ROOT / "images"
    for image, inputs in by_name(ecr.mocks, IMAGE).items():
        repository_url = f"{REGISTRY}/gpufleet-{STACK}-{image}"
        assert inputs["context"] == {"location": str(images_dir / image)}
        assert inputs["dockerfile"] == {"location": str(images_dir / image / "Dockerfile")}
        assert inputs["platforms"] == ["linux/amd64"]
        assert inputs["push"] is True
        assert inputs["buildOnPreview"] is False  # previews of pull requests do not build the images
        assert inputs["tags"] == [f"{repository_url}:{ecr.tags[image]}"]
        assert "exports" not in inputs
        # The password makes the whole list a secret: it never shows in plain text in the state or a preview.
        registries = inputs["registries"]
        assert registries[SIG_KEY] == SECRET_SIG
        assert registries["value"] == [{"address": REGISTRY, "username": "AWS", "password": "fake-password"}]


def test_engine_version_is_a_build_arg_only_where_the_dockerfile_takes_it(ecr: Built) -> None:
    images = by_name(ecr.mocks, IMAGE)
    assert images["vllm"]["buildArgs"] == {"VLLM_VERSION": VLLM_VERSION}
    assert images["lb"].get("buildArgs", {}) == {}


def test_registry_token_is_asked_for_the_repositories_registry(ecr: Built) -> None:
    assert [(token, args.get("registryId")) for token, args in ecr.mocks.calls] == [(TOKEN, ACCOUNT)] * len(IMAGES)


def test_tag_is_the_engine_version_and_the_content_hash(ecr: Built) -> None:
    for image in IMAGES:
        digest = content_hash(ROOT / "images" / image)
        assert len(digest) == 12 and int(digest, 16) >= 0
        assert ecr.tags[image] == f"v{VLLM_VERSION}-{digest}"


def test_content_hash_follows_every_byte_and_only_its_directory(tmp_path: Path) -> None:
    copy = tmp_path / "images"
    shutil.copytree(ROOT / "images", copy)
    before = {image: image_tag(image, VLLM_VERSION, copy / image) for image in IMAGES}
    # Another checkout of the same files: the same tags.
    assert before == {image: image_tag(image, VLLM_VERSION, ROOT / "images" / image) for image in IMAGES}
    dockerfile = copy / "vllm" / "Dockerfile"
    dockerfile.write_bytes(dockerfile.read_bytes() + b"\n")
    after = {image: image_tag(image, VLLM_VERSION, copy / image) for image in IMAGES}
    assert after["vllm"] != before["vllm"] and after["vllm"].startswith(f"v{VLLM_VERSION}-")
    assert after["lb"] == before["lb"]
    # A renamed file with the same bytes is another context.
    (copy / "lb" / "extra.conf").write_text("x", encoding="utf-8")
    renamed = content_hash(copy / "lb")
    (copy / "lb" / "extra.conf").rename(copy / "lb" / "other.conf")
    assert content_hash(copy / "lb") != renamed


def test_image_tag_needs_a_dockerfile(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no Dockerfile"):
        image_tag("empty", VLLM_VERSION, tmp_path)


def test_images_follow_the_directories(tmp_path: Path) -> None:
    copy = tmp_path / "images"
    shutil.copytree(ROOT / "images", copy)
    (copy / "exporter").mkdir()
    (copy / "exporter" / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (copy / "notes").mkdir()  # no Dockerfile: not an image
    built = build(copy)
    assert sorted(by_name(built.mocks, IMAGE)) == ["exporter", *IMAGES]
    assert built.refs["exporter"] == f"{REGISTRY}/gpufleet-{STACK}-exporter@{fake_digest(f'{STACK}-exporter')}"


def test_refs_are_the_repository_url_with_the_pushed_digest(ecr: Built) -> None:
    assert ecr.refs == {
        image: f"{REGISTRY}/gpufleet-{STACK}-{image}@{fake_digest(f'{STACK}-{image}')}" for image in IMAGES}


def test_archive_mode_exports_a_tar_and_pushes_nothing(archive: tuple[Built, Path]) -> None:
    built, out = archive
    assert sorted((r.type, r.name) for r in built.mocks.resources) == sorted(
        [("gpufleet:images:Images", STACK)] + [(IMAGE, f"{STACK}-{image}") for image in IMAGES])
    assert built.mocks.calls == []  # no registry, no token
    assert out.is_dir()
    for image, inputs in by_name(built.mocks, IMAGE).items():
        local_name = f"gpufleet-{image}:{built.tags[image]}"
        assert inputs["push"] is False
        assert "registries" not in inputs
        assert inputs["tags"] == [local_name]
        [export] = inputs["exports"]
        assert list(export) == ["docker"]  # BuildKit's docker exporter: the `docker load` layout
        assert export["docker"]["dest"] == str(out / f"{image}.tar")
        assert export["docker"]["tar"] is True
        assert built.refs[image] == local_name


def test_archive_mode_needs_a_directory() -> None:
    with pytest.raises(ValueError, match="archive_dir"):
        build(mode="archive")


def test_dockerfiles_the_images_build_pass_hadolint(ecr: Built) -> None:
    hadolint = require_tool("hadolint")
    dockerfiles = [inputs["dockerfile"]["location"] for inputs in by_name(ecr.mocks, IMAGE).values()]
    assert len(dockerfiles) == len(IMAGES)
    result = subprocess.run([hadolint, "--no-color", "--format", "json", *dockerfiles],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and json.loads(result.stdout or "[]") == [], result.stdout + result.stderr
