"""The deploy roles of infra/bootstrap.yaml against what each deploy job does, as IAM decides
(`iam_policy.py`). Python: part of the rehearsal, in the SAM CLI's environment.

A job's needs come from the commands it runs and what AWS documents they require:
- `infra/deploy.sh deploy ENV`: change sets on ENV's stack (samconfig.toml's stack_name), the SAM
  transform, passing the execution role to CloudFormation, uploading under ENV's s3_prefix;
- `infra/smoke-stack.sh STACK`: describing the stack, and for a function URL with AWS_IAM auth
  both lambda:InvokeFunctionUrl and lambda:InvokeFunction on the alias the URL points at
  ("Starting in October 2025, new function URLs will require both ...", Lambda developer guide,
  "Control access to Lambda function URLs");
- `aws lambda get-alias|update-alias --function-name F`: that action on F and its aliases.
Each role must allow all of its own job's needs and none of the other environment's.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import iam_policy

FEDERATED = "arn:aws:iam::{account}:oidc-provider/token.actions.githubusercontent.com"


class Broken(Exception):
    """A deploy job's role lacks what the job needs, or reaches the other environment."""


class Roles:
    """The resolved bootstrap stack: roles, their policies, and the repository variables that
    its outputs become (each output's description names its variable)."""

    def __init__(self, resources: dict, outputs: dict, account: str):
        self.resources = resources
        self.account = account
        self.variables = {}
        for out in outputs.values():
            m = re.search(r"Repository variable (\w+)", out.get("Description", ""))
            if m:
                self.variables[m.group(1)] = out["Value"]

    def _role(self, arn: str) -> dict:
        for name, r in self.resources.items():
            if r["Type"] == "AWS::IAM::Role" and arn.endswith(f":role/{name}"):
                return r["Properties"]
        raise Broken(f"{arn} is no role of bootstrap.yaml")

    def policies(self, arn: str) -> list[dict]:
        role = self._role(arn)
        docs = [p["PolicyDocument"] for p in role.get("Policies", [])]
        for managed in role.get("ManagedPolicyArns", []):
            name = managed.rsplit("/", 1)[-1]
            if self.resources.get(name, {}).get("Type") != "AWS::IAM::ManagedPolicy":
                raise Broken(f"{arn} has managed policy {managed}, which bootstrap.yaml does not define")
            docs.append(self.resources[name]["Properties"]["PolicyDocument"])
        return docs

    def admits(self, arn: str, claims: dict) -> bool:
        trust = self._role(arn)["AssumeRolePolicyDocument"]
        principal = {"Federated": FEDERATED.format(account=self.account)}
        return iam_policy.decide([trust], "sts:AssumeRoleWithWebIdentity", None, claims, principal) == iam_policy.ALLOW

    def execution_role(self) -> str:
        return self.variables["CFN_EXECUTION_ROLE_ARN"]


def samconfig(infra: Path) -> dict:
    return tomllib.loads((infra / "samconfig.toml").read_text())


def function_arn(template: dict, stack: str, region: str, account: str) -> str:
    """The stack's function (template.yaml names it after the stack)."""
    name = template["Resources"]["ZipFunction"]["Properties"]["FunctionName"]["Fn::Sub"]
    return f"arn:aws:lambda:{region}:{account}:function:{name.replace('${AWS::StackName}', stack)}"


def alias_arn(template: dict, stack: str, region: str, account: str) -> str:
    """The alias the stack's endpoint calls: what an AWS_IAM function URL authorizes against."""
    return f"{function_arn(template, stack, region, account)}:{template['Globals']['Function']['AutoPublishAlias']}"


def needs(scripts: str, infra: Path, template: dict, roles: Roles, region: str, account: str) -> list[tuple]:
    """(action, resource, condition context) for every AWS call the job's commands make."""
    config = samconfig(infra)
    alias = template["Globals"]["Function"]["AutoPublishAlias"]
    cfn = f"arn:aws:cloudformation:{region}:{account}"
    lam = f"arn:aws:lambda:{region}:{account}:function"
    bucket = roles.variables["ARTIFACT_BUCKET"]
    out = []
    for env in re.findall(r"infra/deploy\.sh deploy (\w+)", scripts):
        stack = config[env]["global"]["parameters"]["stack_name"]
        prefix = config[env]["deploy"]["parameters"]["s3_prefix"]
        stack_arn = f"{cfn}:stack/{stack}/0a1b2c3d-0000-0000-0000-000000000000"
        for action in ("CreateChangeSet", "DescribeChangeSet", "ExecuteChangeSet", "DescribeStacks", "DescribeStackEvents"):
            out.append((f"cloudformation:{action}", stack_arn, {}))
        out.append(("cloudformation:CreateChangeSet", f"arn:aws:cloudformation:{region}:aws:transform/Serverless-2016-10-31", {}))
        out.append(("iam:PassRole", roles.execution_role(), {"iam:PassedToService": "cloudformation.amazonaws.com"}))
        out.append(("s3:PutObject", f"arn:aws:s3:::{bucket}/{prefix}/0123456789abcdef0123456789abcdef", {}))
    for stack in re.findall(r"infra/smoke-stack\.sh ([\w-]+)", scripts):
        out.append(("cloudformation:DescribeStacks", f"{cfn}:stack/{stack}/0a1b2c3d-0000-0000-0000-000000000000", {}))
        qualified = alias_arn(template, stack, region, account)
        out.append(("lambda:InvokeFunctionUrl", qualified, {"lambda:FunctionUrlAuthType": "AWS_IAM"}))
        out.append(("lambda:InvokeFunction", qualified, {}))
    for verb, function in re.findall(r"aws lambda (get-alias|update-alias) --function-name ([\w-]+)", scripts):
        action = "lambda:" + "".join(w.capitalize() for w in verb.split("-"))
        out.append((action, f"{lam}:{function}", {}))
        out.append((action, f"{lam}:{function}:{alias}", {}))
    return out


def check(jobs: dict, infra: Path, template: dict, roles: Roles, region: str, account: str) -> list[str]:
    """`jobs`: environment -> (role ARN, the job's scripts), for each deploy environment."""
    lines = []
    for env, (role, scripts) in sorted(jobs.items()):
        policies = roles.policies(role)
        wanted = needs(scripts, infra, template, roles, region, account)
        if not wanted:
            raise Broken(f"the {env} job runs no deploy or smoke command this check knows")
        for action, resource, context in wanted:
            decision = iam_policy.decide(policies, action, resource, context)
            if decision != iam_policy.ALLOW:
                raise Broken(f"{role} ({env}) may not {action} on {resource}: {decision}")
        lines.append(f"{env}: {role.rsplit('/', 1)[-1]} allows its job's {len(wanted)} calls")
        for other, (_, other_scripts) in jobs.items():
            if other == env:
                continue
            for action, resource, context in needs(other_scripts, infra, template, roles, region, account):
                if resource.startswith(f"arn:aws:cloudformation:{region}:aws:transform/") or action == "iam:PassRole":
                    continue  # the transform and the execution role are shared, naming no stack
                if action == "cloudformation:DescribeStacks":
                    continue
                if iam_policy.decide(policies, action, resource, context) == iam_policy.ALLOW:
                    raise Broken(f"{role} ({env}) may {action} on {resource}, which is {other}'s")
        lines.append(f"{env}: {role.rsplit('/', 1)[-1]} may change nothing of the other environments")
    return lines
