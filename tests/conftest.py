"""Test tiers. Every test module names its tier with `pytestmark = pytest.mark.<tier>`,
so that `scripts/test.sh -m unit` runs the fast pure and mock tests (no service, no built
tool) and `.ci/run` runs everything:

  unit    pure functions, Pulumi mocks, linters over files: no Docker, no engine, nothing
          built (shellcheck, from apt, is the one tool)
  e2e     real services and built tools: the Docker engine, the relay image,
          sshd/ufw/certbot/pebble in a network namespace, nsd, Postfix, actionlint
  engine  the real Pulumi engine (scripts/pulumi-toolchain.sh), often with the above

One tier per module: a module without one, or with a test marked for another tier, is a
collection error.
"""

from __future__ import annotations

import pytest

# The relay image's end-to-end fixtures (image, net, workdir, ca, dkim_pem, dns, ctx).
pytest_plugins = ["tests.relay_fixtures"]

TIERS = ("unit", "e2e", "engine")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tiers = {m.name for m in item.iter_markers() if m.name in TIERS}
        if len(tiers) != 1:
            module = item.nodeid.split("::", 1)[0]
            what = "no tier" if not tiers else f"tiers {sorted(tiers)}"
            raise pytest.UsageError(
                f"{item.nodeid}: {what}; give {module} one, `pytestmark = pytest.mark.unit` "
                f"(or e2e, engine), and no other tier marker on its tests"
            )
