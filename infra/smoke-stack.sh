#!/usr/bin/env bash
# Smoke-tests a deployed stack: reads its outputs (endpoint, auth mode, where the model comes
# from), works out the sha256 the served model must have, and runs infra/smoke.sh with it.
#
#   infra/smoke-stack.sh STACK_NAME
#
# Needs AWS credentials that may describe the stack, read the model's `.sha256` sidecar (S3
# models), read the API key (API_KEY mode) and invoke the function URL (AWS_IAM mode).
set -euo pipefail

stack="${1:?usage: infra/smoke-stack.sh STACK_NAME}"
here="$(cd "$(dirname "$0")" && pwd)"

output() {
  local value
  value="$(aws cloudformation describe-stacks --stack-name "$stack" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue" --output text)"
  [[ "$value" == None ]] && value=""
  printf '%s' "$value"
}

url="$(output EndpointUrl)"
auth="$(output AuthMode)"
model="$(output ModelUri)"
case "$model" in
  s3://*) expected="$(aws s3 cp "${model}.sha256" - | cut -d' ' -f1)" ;;
  # Empty: the model embedded in `infer` at build time, the checked-out commit's.
  "") expected="$(sha256sum "$here/../models/resnet18-cifar10.onnx" | cut -d' ' -f1)" ;;
  # A path: the model packed into the zip with `cargo xtask package --model`.
  *) expected="$(unzip -p "$here/../target/lambda/infer-arm64.zip" model.onnx | sha256sum | cut -d' ' -f1)" ;;
esac
[[ "$expected" =~ ^[0-9a-f]{64}$ ]] || { echo "smoke-stack: no sha256 for the model at '${model}'" >&2; exit 1; }

if [[ "$auth" == API_KEY ]]; then
  API_KEY="$(aws apigateway get-api-key --api-key "$(output ApiKeyId)" \
    --include-value --query value --output text)"
  [[ -n "${GITHUB_ACTIONS:-}" ]] && echo "::add-mask::$API_KEY"
  export API_KEY
fi
EXPECTED_SHA256="$expected" exec "$here/smoke.sh" "$url" "$auth"
