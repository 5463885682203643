#!/usr/bin/env bash
# Prints the release id of a deploy: a hash of the package (zip deploys) and of the function's
# versioned configuration resolved for the deploy's parameters (infra/release_id.py says which
# properties and why), e.g. `infra/release-id.sh --config-env staging target/lambda/infer-arm64.zip
# ModelKey=models/m.onnx`. The template names the published Lambda version after it
# (AutoPublishCodeSha256): a release that changes the package or the function publishes a new
# version, and one that changes only the rest of the stack (alarms, buckets, logs) keeps it.
#
#   --config-env ENV  parameters not passed keep the current value of ENV's stack (samconfig.toml),
#                     as `sam deploy` keeps them; needs AWS credentials that may describe it
#
# It needs the SAM translator: the Python beside `sam` (pip's aws-sam-cli) or python3.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
python=python3
if sam="$(command -v sam)" && [[ -x "$(dirname "$sam")/python3" ]]; then
  python="$(dirname "$sam")/python3"
fi
exec "$python" "$here/release_id.py" "$@"
