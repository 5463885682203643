#!/usr/bin/env bash
# Posts real CIFAR-10 test images (infra/smoke/<class>-NNNN.jpg) to a deployed endpoint and
# fails unless the service answers every request and labels at least MIN_CORRECT of them right.
#
#   infra/smoke.sh ENDPOINT_URL [AUTH_MODE]
#
# AUTH_MODE is the stack's AuthMode: NONE (default), AWS_IAM (signs with the AWS credentials in
# the environment), or API_KEY (sends $API_KEY as x-api-key). With EXPECTED_SHA256 set, it first
# checks that the endpoint serves that model (`GET /v1/model`): a release whose new model never
# reached the function fails here even when the old model labels the images right.
set -euo pipefail

url="${1:?usage: infra/smoke.sh ENDPOINT_URL [NONE|AWS_IAM|API_KEY]}"
auth="${2:-NONE}"
images="$(dirname "$0")/smoke"
min_correct="${MIN_CORRECT:-14}"

auth_args=()
case "$auth" in
  NONE) ;;
  AWS_IAM)
    region="${AWS_REGION:-${AWS_DEFAULT_REGION:?AWS_REGION is needed to sign requests}}"
    auth_args=(--aws-sigv4 "aws:amz:${region}:lambda"
      --user "${AWS_ACCESS_KEY_ID:?}:${AWS_SECRET_ACCESS_KEY:?}")
    if [[ -n "${AWS_SESSION_TOKEN:-}" ]]; then
      auth_args+=(-H "x-amz-security-token: ${AWS_SESSION_TOKEN}")
    fi
    ;;
  API_KEY) auth_args=(-H "x-api-key: ${API_KEY:?API_KEY must hold the key value}") ;;
  *) echo "unknown auth mode ${auth}" >&2; exit 2 ;;
esac

if [[ -n "${EXPECTED_SHA256:-}" ]]; then
  model="$(curl --silent --show-error --fail-with-body --max-time 30 --retry 2 --retry-all-errors \
    "${auth_args[@]}" "${url%/}/v1/model")"
  served="$(jq -er '.sha256' <<<"$model")"
  if [[ "$served" != "$EXPECTED_SHA256" ]]; then
    echo "smoke: the endpoint serves the model with sha256 ${served}, expected ${EXPECTED_SHA256}" >&2
    exit 1
  fi
  echo "smoke: serving the expected model (sha256 ${served})"
fi

total=0
correct=0
for image in "$images"/*.jpg; do
  name="$(basename "$image" .jpg)"
  want="${name%-*}"
  # --fail-with-body: an HTTP error fails the script and still shows the service's message.
  body="$(curl --silent --show-error --fail-with-body --max-time 30 --retry 2 --retry-all-errors \
    "${auth_args[@]}" -H "content-type: image/jpeg" --data-binary "@${image}" \
    "${url%/}/v1/predict")"
  got="$(jq -er '.predictions[0].label' <<<"$body")"
  total=$((total + 1))
  if [[ "$got" == "$want" ]]; then
    correct=$((correct + 1))
  fi
  echo "${name}: ${got}"
done

echo "smoke: ${correct} of ${total} labelled right (need ${min_correct})"
if ((total == 0 || correct < min_correct)); then
  exit 1
fi
