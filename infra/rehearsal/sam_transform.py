"""The SAM transform (what `sam validate`, `sam deploy` and CloudFormation run) of one deployment.

Python because the SAM translator (samtranslator) is the transform itself; there is no other
implementation.

Parameter defaults are overridden with the deployment's values, so that every condition resolves
as in that deployment, and local `CodeUri` paths become an S3 location, as `sam package` makes
them. Used by `cargo xtask lint` (`sam_transform.py SRC OUT NAME=VALUE ...` writes the result as
JSON, to be linted) and by `rehearse.py` (imported).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from samtranslator.translator.transform import transform
from samtranslator.yaml_helper import yaml_parse

# The translator asks boto3 for a region to build ARNs; no call leaves the machine.
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


class _NoManagedPolicies:
    def load(self):
        return {}


def transformed(src: Path, parameters: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """The transformed template and the parameter values it was transformed with."""
    template = yaml_parse(Path(src).read_text())
    for name, value in parameters.items():
        if name not in template["Parameters"]:
            raise KeyError(f"{src} has no parameter {name}")
        template["Parameters"][name]["Default"] = value
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        if resource.get("Type") == "AWS::Serverless::Function" and isinstance(props.get("CodeUri"), str):
            props["CodeUri"] = "s3://artifacts/package.zip"
    values = {k: v["Default"] for k, v in template["Parameters"].items() if "Default" in v}
    return transform(template, values, _NoManagedPolicies()), values


if __name__ == "__main__":
    src, out, *pairs = sys.argv[1:]
    result, _ = transformed(Path(src), dict(pair.split("=", 1) for pair in pairs))
    Path(out).write_text(json.dumps(result, indent=1))
