#!/usr/bin/env bash
# Prints the release id of a deploy: the sha256 over the package's digest and every parameter
# the deploy passes (sorted), e.g. `infra/release-id.sh target/lambda/infer-arm64.zip
# ModelKey=models/m.onnx TrafficShift=AllAtOnce`. The template names the published Lambda
# version after it (AutoPublishCodeSha256), so a release that differs in the package, the model
# key or any parameter publishes a new version, and an identical one publishes none.
set -euo pipefail

package="${1:?usage: infra/release-id.sh PACKAGE.zip [NAME=VALUE ...]}"
shift
[[ -f "$package" ]] || { echo "release-id: no package at ${package}" >&2; exit 2; }
{
  echo "package=$(sha256sum "$package" | cut -d' ' -f1)"
  # ReleaseId itself never takes part; the rest in a fixed order.
  printf '%s\n' "$@" | grep -v '^ReleaseId=' | LC_ALL=C sort || true
} | sha256sum | cut -c1-32
