#!/usr/bin/env bash
# Every `sam` command of a release, one home for their flags: the deploy workflow runs it, and
# `cargo xtask test` runs it against a local S3/CloudFormation emulator (the rehearsal).
#
#   infra/deploy.sh validate ENV              sam validate --lint
#   infra/deploy.sh package  ENV OUT.yaml     sam package (uploads the zip, writes the template)
#   infra/deploy.sh deploy   ENV [SAM_ARGS]   sam deploy (extra arguments go to sam as they are)
#
# ENV is a config env of samconfig.toml: staging or production. From the environment:
#   ARTIFACT_BUCKET   bucket for what sam uploads (infra/bootstrap.yaml's ArtifactBucket)
#   MODEL_BUCKET      optional: the shared model bucket (ModelBucketName)
#   MODEL_KEY         optional: the model's key in it; empty keeps the stack's current model
#   CFN_EXECUTION_ROLE_ARN  optional: the role CloudFormation acts as (bootstrap's); with it,
#                     RoleBoundaryArn is bootstrap's boundary (or ROLE_BOUNDARY_ARN)
#   PACKAGE           the zip, default target/lambda/infer-arm64.zip
#   PARAMETERS        optional: more NAME=VALUE overrides, space-separated
#   AWS_REGION        the region
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
command="${1:?usage: infra/deploy.sh validate|package|deploy ENV [...]}"
config_env="${2:?usage: infra/deploy.sh validate|package|deploy ENV [...]}"
shift 2
case "$config_env" in
  staging | production) ;;
  *) echo "deploy.sh: ENV must be staging or production, not ${config_env}" >&2; exit 2 ;;
esac
region="${AWS_REGION:?AWS_REGION must name the region}"
package="$(realpath -m "${PACKAGE:-${here}/../target/lambda/infer-arm64.zip}")"

# SAM CLI wants a repository for every image function in the template, conditions
# notwithstanding. The image functions' image is built and pushed outside SAM (their ImageUri
# is a parameter), so SAM never pushes to this name; without it even a zip deploy stops at once.
image_repo="${IMAGE_REPOSITORY:-000000000000.dkr.ecr.${region}.amazonaws.com/unused}"
image_repos=(--image-repositories "ImageFunction=${image_repo}" --image-repositories "BulkImageWorker=${image_repo}")

parameters=()
if [[ "$config_env" == staging ]]; then
  parameters+=(TrafficShift=AllAtOnce)
else
  parameters+=(TrafficShift=Canary10Percent5Minutes)
fi
[[ -n "${MODEL_BUCKET:-}" ]] && parameters+=("ModelBucketName=${MODEL_BUCKET}")
[[ -n "${MODEL_KEY:-}" ]] && parameters+=("ModelKey=${MODEL_KEY}")
# Bootstrap's execution role creates roles only with its boundary, which lives beside it:
# arn:...:iam::ACCOUNT:policy/resnet-serverless-role-boundary (ROLE_BOUNDARY_ARN overrides).
if [[ -n "${CFN_EXECUTION_ROLE_ARN:-}" ]]; then
  parameters+=("RoleBoundaryArn=${ROLE_BOUNDARY_ARN:-${CFN_EXECUTION_ROLE_ARN%%:role/*}:policy/resnet-serverless-role-boundary}")
fi
if [[ -n "${PARAMETERS:-}" ]]; then
  read -r -a extra <<<"$PARAMETERS"
  parameters+=("${extra[@]}")
fi

cd "$here"
case "$command" in
  validate)
    exec sam validate --config-env "$config_env" --template-file template.yaml --region "$region" --lint
    ;;
  package)
    out="${1:?usage: infra/deploy.sh package ENV OUT.yaml}"
    exec sam package --config-env "$config_env" --template-file template.yaml --region "$region" \
      --s3-bucket "${ARTIFACT_BUCKET:?ARTIFACT_BUCKET must name the artifact bucket}" \
      "${image_repos[@]}" --output-template-file "$out"
    ;;
  deploy)
    release="$("$here/release-id.sh" --config-env "$config_env" "$package" "${parameters[@]}")"
    echo "deploy.sh: release ${release} to ${config_env}: ${parameters[*]}"
    role=()
    [[ -n "${CFN_EXECUTION_ROLE_ARN:-}" ]] && role=(--role-arn "$CFN_EXECUTION_ROLE_ARN")
    exec sam deploy --config-env "$config_env" --template-file template.yaml --region "$region" \
      --s3-bucket "${ARTIFACT_BUCKET:?ARTIFACT_BUCKET must name the artifact bucket}" \
      "${image_repos[@]}" "${role[@]}" --no-confirm-changeset --no-fail-on-empty-changeset \
      --parameter-overrides "${parameters[@]}" "ReleaseId=${release}" "$@"
    ;;
  *) echo "deploy.sh: unknown command ${command}" >&2; exit 2 ;;
esac
