"""Programs that run on the fleet's own hosts, not on the deploying machine.

Shipped as plain files (cloud-init user data, the config bundle, a ConfigMap), so this package imports only
the Python standard library, boto3 and PyYAML: on a Debian 12 host those are ``python3``, ``python3-boto3``
and ``python3-yaml``, with nothing else installed. It never imports the rest of ``infra`` (tests check it);
the renderers import it instead, so a file written at deploy time on a host has the same bytes as the same
file rendered on-prem.
"""
