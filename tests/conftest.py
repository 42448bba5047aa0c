"""Test tiers. Every test module has one, so that `scripts/test.sh -m unit` runs the fast
pure and mock tests (no service needed) and `.ci/run` runs everything:

  unit    pure functions, Pulumi mocks, linters over files: no Docker, no engine
  e2e     real services: the Docker engine, the relay image, sshd/ufw/certbot/pebble in a
          network namespace, nsd, Postfix
  engine  the real Pulumi engine (scripts/pulumi-toolchain.sh), often with the above

A test may carry its own tier marker; a module missing from TIERS is a collection error.
"""

from __future__ import annotations

import pytest

# The relay image's end-to-end fixtures (image, net, workdir, ca, dkim_pem, dns, ctx).
pytest_plugins = ["tests.relay_fixtures"]

TIERS = {
    "test_config": "unit",
    "test_dkim": "unit",
    "test_dmarc_reports": "unit",
    "test_dns": "unit",
    "test_guide": "unit",
    "test_host_mocks": "unit",
    "test_host_scripts": "unit",
    "test_local_stack": "unit",
    "test_postfix": "unit",
    "test_program": "unit",
    "test_relay_mocks": "unit",
    "test_verify_unit": "unit",
    "test_workflows": "unit",
    "test_host_vps": "e2e",
    "test_relay_container": "unit",
    "test_retire": "e2e",
    "test_relay_e2e": "e2e",
    "test_relay_hardening": "e2e",
    "test_relay_outbound": "e2e",
    "test_verify_e2e": "e2e",
    "test_verify_relay_e2e": "e2e",
    "test_backends": "engine",
    "test_engine": "engine",
    "test_engine_vps": "engine",
    "test_host_pulumi": "engine",
    "test_relay_pulumi": "engine",
    "test_relay_remote": "engine",
    "test_toolchain": "engine",
    "test_upgrade_local": "engine",
    "test_upgrade_vps": "engine",
}
MARKERS = ("unit", "e2e", "engine")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if any(item.get_closest_marker(m) for m in MARKERS):
            continue
        module = item.nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
        tier = TIERS.get(module)
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: give {module} a tier in tests/conftest.py")
        item.add_marker(getattr(pytest.mark, tier))
