"""The release id of a deploy: a hash of what defines the published Lambda version, and nothing else.

Python because the SAM translator, which turns template.yaml into the function CloudFormation
creates, is Python (the SAM CLI's own environment has it). `infra/release-id.sh` runs this.

The template names the published version after the release id (AutoPublishCodeSha256), so a
new id must mean a new function version: Lambda publishes one only when the function's code or
configuration changed, and SAM appends the id to the function's Description to make it change.
An id that moved for a parameter the function does not use (an alarm threshold, the log
retention, a bucket the function does not read) would publish a version that differs only in
that Description and run a whole traffic shift for nothing. So the id hashes:

- the package's sha256, when the deployment's function is a zip;
- every property of each AWS::Lambda::Function of the transformed template that is part of
  a version's configuration (a member of Lambda's FunctionConfiguration, as botocore's model of
  the Lambda API has it: Environment, MemorySize, Timeout, Role, Architectures, ImageUri's
  Code...; not ReservedConcurrentExecutions or Tags, which belong to the unversioned function),
  resolved for this deployment's parameter values.

Those values are the deploy's own (NAME=VALUE), then, as `sam deploy` does (UsePreviousValue
for every parameter not passed), the stack's current ones, then the template's defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import tomllib
from pathlib import Path

INFRA = Path(__file__).resolve().parent
sys.path.insert(0, str(INFRA / "rehearsal"))

import sam_transform  # noqa: E402  (the one home of the transform of one deployment)
from cfn_intrinsics import Resolver, Unresolved  # noqa: E402  (the one resolver of intrinsics)

TEMPLATE = INFRA / "template.yaml"
# What SAM writes into the function (its Description) and the version's name; fixed here so that
# only the function's own configuration moves the hash.
PLACEHOLDER = "release"
logging.getLogger("samtranslator").setLevel(logging.ERROR)


def versioned_properties() -> set[str]:
    """The members of a version's configuration, lower-cased (CloudFormation spells KmsKeyArn
    what the API calls KMSKeyArn). Code stands for CodeSha256 and the image."""
    import botocore.session

    shape = botocore.session.get_session().get_service_model("lambda").shape_for("FunctionConfiguration")
    return {m.lower() for m in shape.members} | {"code"}


def function_versions(template: dict, values: dict[str, str], stack: str) -> dict[str, dict]:
    """Each function of this deployment: its versioned configuration, resolved."""
    resolver = Resolver(template, values, stack)
    keep = versioned_properties()
    out = {}
    for name, resource in sorted(template["Resources"].items()):
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        if "Condition" in resource and not resolver.condition(resource["Condition"]):
            continue
        props = resolver.resolve(resource.get("Properties", {}))
        out[name] = {k: v for k, v in sorted(props.items()) if k.lower() in keep}
    return out


def previous_values(stack: str) -> dict[str, str]:
    """The stack's current parameter values; none for a stack that does not exist yet (or only
    holds the change set of its first deploy). Any other failure stops the deploy."""
    import boto3
    from botocore.exceptions import ClientError

    try:
        found = boto3.client("cloudformation").describe_stacks(StackName=stack)["Stacks"]
    except ClientError as e:
        if e.response["Error"]["Code"] == "ValidationError" and "does not exist" in str(e):
            return {}
        raise
    if not found or found[0]["StackStatus"] == "REVIEW_IN_PROGRESS":
        return {}
    return {p["ParameterKey"]: p["ParameterValue"] for p in found[0].get("Parameters", [])}


def release_id(package: Path, passed: dict[str, str], previous: dict[str, str], stack: str) -> str:
    parameters = {k: v for k, v in {**previous, **passed}.items() if k != "ReleaseId"}
    template, values = sam_transform.transformed(TEMPLATE, {**parameters, "ReleaseId": PLACEHOLDER})
    functions = function_versions(template, values, stack)
    if not functions:
        raise Unresolved("no AWS::Lambda::Function in this deployment")
    described = {"functions": functions}
    if any(f.get("PackageType", "Zip") == "Zip" for f in functions.values()):
        described["package"] = hashlib.sha256(package.read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:32]


def stack_of(config_env: str) -> str:
    config = tomllib.loads((INFRA / "samconfig.toml").read_text())
    return config[config_env]["global"]["parameters"]["stack_name"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-env", help="samconfig.toml env whose stack's current values fill in")
    parser.add_argument("package", type=Path)
    parser.add_argument("pairs", nargs="*", metavar="NAME=VALUE")
    args = parser.parse_args()
    if not args.package.is_file():
        print(f"release-id: no package at {args.package}", file=sys.stderr)
        return 2
    passed = {}
    for pair in args.pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            print(f"release-id: {pair!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        passed[name] = value
    stack = stack_of(args.config_env) if args.config_env else "stack"
    previous = previous_values(stack) if args.config_env else {}
    try:
        print(release_id(args.package, passed, previous, stack))
    except (KeyError, Unresolved) as e:
        print(f"release-id: cannot resolve the function of this deployment: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
