"""gpufleet's policy pack: wires the rules of infra/provision/policy.py into pulumi-policy.

Nothing here is tested: ``PolicyPack()`` starts a gRPC server and blocks. The rules and the adapters are
unit-tested in tests/pulumi/test_policy.py.
"""

import sys
from pathlib import Path

# The pack runs from this directory; the project root makes `infra` importable even without an editable install.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import PolicyPack

from infra.provision.policy import pulumi_policies

PolicyPack(name="gpufleet", policies=pulumi_policies())
