#!/usr/bin/env bash
# Sourced by scripts/test.sh before pytest: bring up dockerd and the offline base image.
# Runs the engine script in a child bash so its strict mode and exits stay contained.
bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/docker-engine.sh"
