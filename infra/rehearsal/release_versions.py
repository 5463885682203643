"""Rehearsal step: a new release id is a new function, for every parameter of the template.

Python because the version comes from the real SAM translator and the configuration's members from
botocore's model of the Lambda API.

Lambda publishes a version only when the function's code or configuration changed (PublishVersion:
"Lambda doesn't publish a version if the function's configuration and code haven't changed since
the last version"); SAM names the version after the release id and appends the id to the
function's Description so that a new id always changes something. So the id must move exactly
when the version's configuration does: a parameter that moves the id without changing the
function publishes a version that differs only in that Description (a traffic shift for
nothing), and one that changes the function but keeps the id leaves `live` on the old version.

For each template parameter, in a zip deployment with and without a model from S3 and in an
image deployment, the parameter is changed to another valid value; the release id comes from
`infra/release-id.sh`'s code, the version from the real SAM translator, and the configuration
from the transformed AWS::Lambda::Function resolved for those values, restricted to what a
version holds: the members of Lambda's FunctionConfiguration in botocore's model of the API,
and the code, with the release id taken out of the Description again.

Imported by rehearse.py, which hands in its own transform and resolver (no import back).
"""

from __future__ import annotations

from typing import Callable

import botocore.session

BASES = {
    "zip, bundled model": {},
    "zip, model from the shared bucket": {"ModelKey": "models/a.onnx", "ModelBucketName": "models"},
    "image": {"PackageType": "Image", "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/infer:a"},
}


def versioned(props: dict, release: str) -> dict:
    shape = botocore.session.get_session().get_service_model("lambda").shape_for("FunctionConfiguration")
    keep = {m.lower() for m in shape.members} | {"code"}
    out = {k: v for k, v in props.items() if k.lower() in keep}
    description = str(out.get("Description", ""))
    if description == release or description.endswith(f" {release}"):
        out["Description"] = description.removesuffix(release).rstrip()
    return out


def other_value(name: str, spec: dict, current: str) -> str:
    """Another value the parameter accepts."""
    allowed = [str(v) for v in spec.get("AllowedValues", [])]
    if allowed:
        return next(v for v in allowed if v != current)
    if spec.get("Type") == "Number":
        low, high = float(spec.get("MinValue", -1e18)), float(spec.get("MaxValue", 1e18))
        value = int(float(current or 0)) + 1
        return str(value if value <= high else max(int(low), value - 2))
    if name == "ImageUri":
        return "123456789012.dkr.ecr.us-east-1.amazonaws.com/infer:b"
    return f"{current}other/" if current.endswith("/") else (f"{current}-other" if current else "other")


def check(release_id: Callable[[dict], str], transformed: Callable[[dict], dict], resolver) -> list[str]:
    """The problems found, one line each (empty: every parameter behaves)."""

    def deployment(parameters: dict) -> tuple[list[str], dict]:
        release = release_id(parameters)
        template = transformed(dict(parameters, ReleaseId=release))
        r = resolver(template, {})
        res = template["Resources"]

        def active(name: str) -> bool:
            return "Condition" not in res[name] or r.condition(res[name]["Condition"])

        functions = {n for n, v in res.items() if v["Type"] == "AWS::Lambda::Function" and active(n)}
        versions = sorted(
            n
            for n, v in res.items()
            if v["Type"] == "AWS::Lambda::Version" and active(n) and v["Properties"]["FunctionName"].get("Ref") in functions
        )
        configs = {n: versioned(r.resolve(res[n]["Properties"]), release) for n in sorted(functions)}
        return versions, configs

    problems = []
    spec = transformed({})
    parameters = {k: v for k, v in spec["Parameters"].items() if k != "ReleaseId"}
    for label, base in BASES.items():
        versions, configs = deployment(base)
        values = transformed(dict(base, ReleaseId="x"))["_values"]
        for name, p in parameters.items():
            value = other_value(name, p, str(values.get(name, "")))
            new_versions, new_configs = deployment(dict(base, **{name: value}))
            if new_versions != versions and new_configs == configs:
                problems.append(f"{label}: {name}={value} publishes a new version of an unchanged function")
            if new_versions == versions and new_configs != configs:
                problems.append(f"{label}: {name}={value} changes the function but keeps version {versions}")
    return problems
