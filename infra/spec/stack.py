"""The stack spec: the ``gpufleet:`` keys of ``stacks/Pulumi.<stack>.yaml``.

One stack is one environment (dev, staging, prod, an on-prem site). It says where the fleet runs, what
it may cost, who may reach it, and what it serves at which load and latency.
"""

from __future__ import annotations

from ipaddress import ip_network
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator, model_validator

from infra.spec.alerting import Alerting
from infra.spec.base import DNS_LABEL, SpecModel
from infra.spec.secrets import SecretRef
from infra.spec.tokens import TokenLengths

Target = Literal["aws-ec2", "eks", "onprem"]
HOSTNAME = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$"
AWS_REGION = r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$"


def _cidr(value: str) -> str:
    try:
        return str(ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"not a network in CIDR notation (like 10.0.0.0/8): {exc}") from None


Cidr = Annotated[str, AfterValidator(_cidr)]


class Traffic(SpecModel):
    qps: float = Field(gt=0, le=100_000)
    """Sustained requests per second the deployment must serve."""
    peak_factor: float = Field(default=1.0, ge=1, le=100)
    """Peak / sustained load; the fleet is sized for qps × peakFactor."""
    input_tokens: TokenLengths
    """Prompt lengths (including the chat template and system prompt)."""
    output_tokens: TokenLengths
    """Completion lengths."""

    @property
    def peak_qps(self) -> float:
        return self.qps * self.peak_factor


class Slo(SpecModel):
    ttft_p95_ms: float = Field(gt=0, le=600_000)
    """Time to first token, 95th percentile, in milliseconds."""
    tpot_p95_ms: float = Field(gt=0, le=10_000)
    """Time per output token after the first, 95th percentile, in milliseconds."""
    e2e_p95_ms: float | None = Field(default=None, alias="e2eP95Ms", gt=0, le=3_600_000)
    """Optional end-to-end latency target, 95th percentile, in milliseconds."""
    redundancy: Literal["n+1", "none"] = "n+1"
    """n+1: the fleet still meets the SLO with one replica down."""


class Replicas(SpecModel):
    min: int = Field(default=1, ge=1, le=1000)
    max: int = Field(default=8, ge=1, le=1000)

    @model_validator(mode="after")
    def _ordered(self) -> Replicas:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class LoadBalancing(SpecModel):
    policy: Literal["least-conn", "session-affinity"] = "least-conn"
    """least-conn: fewest in-flight requests. session-affinity: consistent hashing on sessionHeader, so a
    conversation returns to the replica that holds its prefix in the KV cache (prefix caching)."""
    session_header: str = Field(default="X-Session-Id", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
    """Request header naming the session (session-affinity only); requests without it are spread at random."""


class CapacityReservation(SpecModel):
    """EC2 capacity the team already holds for a deployment: an On-Demand Capacity Reservation, or an EC2
    Capacity Block for ML (the plan's ``capacity-block`` market). Bought outside gpufleet (a Capacity Block
    is a non-refundable purchase for a fixed window: `aws ec2 describe-capacity-block-offerings`, then
    `aws ec2 purchase-capacity-block`), named here; the deployment's instances launch into it."""

    id: str = Field(pattern=r"^cr-[0-9a-f]{8,17}$")
    zone: str = Field(pattern=r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d[a-z]$")
    """The reservation's availability zone: the deployment's instances launch in its subnet only."""


class Deployment(SpecModel):
    name: str = Field(pattern=DNS_LABEL)
    """DNS-label name, used in resource names, Nginx upstreams and metric labels."""
    model: str = Field(min_length=1)
    """A model profile: stacks/models/<model>.yaml."""
    traffic: Traffic
    slo: Slo
    gpus: list[str] = Field(min_length=1)
    """GPU types the planner may choose from (names in infra/catalog/data/gpus.yaml)."""
    replicas: Replicas = Replicas()
    load_balancing: LoadBalancing = LoadBalancing()
    """How the Nginx load balancer picks a replica."""
    max_tensor_parallel: int = Field(default=8, ge=1, le=8)
    """Largest tensor-parallel degree the planner may use (GPUs of one instance)."""
    capacity_reservation: CapacityReservation | None = None
    """aws-ec2 and eks: launch into reserved capacity (required when the plan chooses a Capacity Block)."""

    @field_validator("gpus")
    @classmethod
    def _unique(cls, gpus: list[str]) -> list[str]:
        seen = {gpu.lower() for gpu in gpus}
        if len(seen) != len(gpus):
            raise ValueError("a GPU type is listed twice")
        return gpus


class OnpremAmortisation(SpecModel):
    """$/server-hour from what the server cost and what it costs to run."""

    capex_usd: float = Field(gt=0)
    """Purchase price of one server."""
    years: float = Field(gt=0, le=10)
    """Depreciation period (straight line)."""
    power_kw: float = Field(ge=0, le=100)
    """Average draw of one server under load, in kW."""
    usd_per_kwh: float = Field(ge=0, le=10)
    pue: float = Field(default=1.4, ge=1, le=3)
    """Data-centre power usage effectiveness (cooling overhead)."""
    opex_usd_per_month: float = Field(default=0, ge=0)
    """Rack space, support contract, network per server and month."""

    @property
    def server_hour_usd(self) -> float:
        hours_per_month = 730  # the Infracost / AWS calculator convention used for every $/month
        capex = self.capex_usd / (self.years * 12 * hours_per_month)
        power = self.power_kw * self.pue * self.usd_per_kwh
        return capex + power + self.opex_usd_per_month / hours_per_month


class OnpremPricing(SpecModel):
    server_hour_usd: float | None = Field(default=None, gt=0)
    """All-in $/hour of one GPU server, if you already know it."""
    amortisation: OnpremAmortisation | None = None

    @model_validator(mode="after")
    def _one_way(self) -> OnpremPricing:
        if (self.server_hour_usd is None) == (self.amortisation is None):
            raise ValueError("give either serverHourUsd or amortisation (exactly one)")
        return self

    @property
    def hourly_usd(self) -> float:
        if self.server_hour_usd is not None:
            return self.server_hour_usd
        assert self.amortisation is not None  # guaranteed by _one_way
        return self.amortisation.server_hour_usd


class Pricing(SpecModel):
    discount_percent: float = Field(default=0, ge=0, lt=100)
    """Negotiated discount on on-demand prices (EDP, savings plan), in percent."""
    spot_allowed: bool = False
    """Allow spot capacity (interruptible) for deployments with redundancy none; n+1 ones stay on-demand."""
    capacity_blocks_allowed: bool = False
    """Allow EC2 Capacity Blocks for ML (reserved GPU time at a fixed price)."""
    instance_prices: dict[str, float] = Field(default_factory=dict)
    """Instance type -> $/hour replacing the catalog price (e.g. a private price sheet)."""
    onprem: OnpremPricing | None = None
    """How an on-prem server's hour is priced (required for the onprem target)."""

    @field_validator("instance_prices")
    @classmethod
    def _positive(cls, prices: dict[str, float]) -> dict[str, float]:
        bad = [name for name, price in prices.items() if price <= 0]
        if bad:
            raise ValueError(f"prices must be > 0 $/hour: {', '.join(bad)}")
        return prices


class AcmCertificate(SpecModel):
    source: Literal["acm"]
    arn: str = Field(pattern=r"^arn:aws[-a-z]*:acm:[a-z0-9-]+:\d{12}:certificate/[-0-9a-f]+$")


class FileCertificate(SpecModel):
    source: Literal["file"]
    cert: SecretRef
    """PEM certificate chain."""
    key: SecretRef
    """PEM private key."""


class SelfSignedCertificate(SpecModel):
    source: Literal["self-signed"]
    """For dev and tests only: clients must skip verification or trust the CA."""


class NoTls(SpecModel):
    source: Literal["none"]
    """Plain HTTP; only for traffic that never leaves a private network."""


def _tls_tag(value: Any) -> str | None:
    raw = value.get("source") if isinstance(value, dict) else getattr(value, "source", None)
    return raw if raw in ("acm", "file", "self-signed", "none") else None


TlsSource = Annotated[
    Annotated[AcmCertificate, Tag("acm")]
    | Annotated[FileCertificate, Tag("file")]
    | Annotated[SelfSignedCertificate, Tag("self-signed")]
    | Annotated[NoTls, Tag("none")],
    Discriminator(
        _tls_tag,
        custom_error_type="tls_source",
        custom_error_message="tls.source must be acm (arn), file (cert + key), self-signed or none",
    ),
]


class Network(SpecModel):
    allowed_client_cidrs: list[Cidr] = Field(min_length=1)
    """Who may reach the load balancer. 0.0.0.0/0 only with an API key and TLS."""
    domain: str | None = Field(default=None, pattern=HOSTNAME, max_length=253)
    """DNS name clients use, e.g. llm.example.com."""
    tls: TlsSource = NoTls(source="none")
    vpc_id: str | None = Field(default=None, pattern=r"^vpc-[0-9a-f]{8,17}$")
    """Use an existing VPC (aws-ec2, eks) instead of creating one."""


class OnpremHost(SpecModel):
    name: str = Field(pattern=DNS_LABEL)
    """Inventory hostname."""
    address: str = Field(min_length=1)
    """IP or DNS name Ansible connects to."""


class OnpremGpuServer(OnpremHost):
    server_type: str = Field(min_length=1)
    """A server type from infra/catalog/data/instances.yaml with provider onprem (e.g. onprem-8xa800)."""


class OnpremSite(SpecModel):
    gpu_servers: list[OnpremGpuServer] = Field(min_length=1)
    load_balancers: list[OnpremHost] = Field(min_length=1)
    monitoring: OnpremHost
    ssh_user: str = Field(default="ansible", pattern=r"^[a-z_][a-z0-9_-]*$")
    admin_cidrs: list[Cidr] = Field(min_length=1)
    """Networks allowed to SSH in (and to open Grafana): the firewall role drops everything else."""
    image_delivery: Literal["pull", "archive"] = "pull"
    """How the GPU servers get the vLLM image: pull (the pinned upstream image, from its registry) or archive
    (`pulumi up` builds images/vllm into a tar archive and the vllm role loads it: sites without registry
    access)."""
    vars_files: list[str] = Field(default_factory=list)
    """Extra-vars files `pulumi up` passes to ansible-playbook (`-e @FILE`, relative to the project root),
    e.g. the ansible-vault encrypted file holding the stack's secrets; the vault password comes from
    ANSIBLE_VAULT_PASSWORD_FILE in the environment of `pulumi up`."""


class EksCluster(SpecModel):
    kubernetes_version: str = Field(default="1.33", pattern=r"^1\.\d{2}$")
    existing_kubeconfig: SecretRef | None = None
    """Deploy into an existing cluster instead of creating one."""


class StackSpec(SpecModel):
    target: Target
    """Where the fleet runs: aws-ec2 (Auto Scaling groups), eks, or onprem (Ansible)."""
    owner: str = Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.@ ]{0,127}$")
    """Team that owns the cost (cost-allocation tag)."""
    region: str | None = Field(default=None, pattern=AWS_REGION)
    """AWS region (aws-ec2, eks)."""
    zones: list[str] = Field(default_factory=list)
    """Availability zones to spread over (aws-ec2, eks); default: the region's first two."""
    monthly_budget_usd: float = Field(gt=0, le=100_000_000)
    """The most the fleet may cost per month (730 h) at the planned size."""
    pricing: Pricing = Pricing()
    network: Network
    api_key: SecretRef
    """The key clients must send as `Authorization: Bearer ...`; never stored in the repo."""
    onprem: OnpremSite | None = None
    """Hosts of the on-prem site (onprem target only)."""
    eks: EksCluster | None = None
    """Cluster settings (eks target only)."""
    deployments: list[Deployment] = Field(min_length=1)
    alerting: Alerting | None = None
    """Who gets the fleet's alerts; without it alerts only show in Alertmanager's UI."""

    @field_validator("zones")
    @classmethod
    def _zone_names(cls, zones: list[str]) -> list[str]:
        bad = [zone for zone in zones if not zone[-1:].isalpha() or not zone[:-1][-1:].isdigit()]
        if bad:
            raise ValueError(f"not an availability-zone name (like us-east-1a): {', '.join(bad)}")
        return zones
