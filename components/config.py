"""The config model moved to `pure.config`; this re-export stays until no module imports it here."""

from pure.config import *  # noqa: F403
from pure.config import RelayConfig as RelayConfig
