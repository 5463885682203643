"""Rehearsal step: the CloudFormation execution role may do what the resources' own handlers do.

Python because it reads the SAM translator's output and cfn-lint's data files, both Python
packages, in the SAM CLI's environment.

With `--role-arn`, CloudFormation creates, reads, updates and deletes every resource of the
stack as bootstrap.yaml's CloudFormationExecutionRole, and each resource type's handler makes
the calls its resource provider schema lists (`handlers.{create,read,update,delete}.permissions`).
A call the role may not make fails that operation: a missing read or delete permission turns a
failed first create into ROLLBACK_FAILED. Nothing here comes from our own templates' idea of what
is needed; the rules come from what cfn-lint ships:

- the resource provider schemas (cfnlint/data/schemas: the registry's own `handlers`);
- the Service Authorization Reference as cfn-lint condenses it (AdditionalSpecs/Policies.json):
  which resource types an action takes, hence whether IAM matches it against the resource's ARN
  or only against "*";

and from documented requirements the schemas do not list (DOCUMENTED below, with the page).

For every deployment that changes the resource set (each value of every parameter that a
condition reads: PackageType, AuthMode, ModelBucketName, ModelKey, ...) and both stacks, every
active resource of the transformed template gets the ARN CloudFormation gives it (named after
the stack; generated names are `STACK-LogicalId-SUFFIX`, bucket names lower-cased), and every
handler permission becomes a request (action, ARN, condition context: iam:PassedToService for
iam:PassRole, iam:PermissionsBoundary and iam:PolicyARN for the role actions that carry them).
Each request is evaluated against the execution role's policies as IAM does: wildcards in
actions (case-insensitive) and resources, NotAction/NotResource, conditions, explicit Deny
first. A handler permission that serves only a feature the resource does not use (VPC settings
on a function without VpcConfig, ...) is excused only where EXCUSED says so, and only while that
property is absent; one whose ARN cannot be derived fails the check until it is written down.

Imported by rehearse.py, which hands in its transform and resolver (no import back).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import cfnlint
import iam_policy
from samtranslator.yaml_helper import yaml_parse

DATA = Path(cfnlint.__file__).parent / "data"
REGION = "us-east-1"
ACCOUNT = "123456789012"
SUFFIX = "A1B2C3D4E5F6"  # CloudFormation's random part of a generated name
STACKS = ("resnet-serverless", "resnet-serverless-staging")
BOOTSTRAP_STACK = "resnet-serverless-bootstrap"
ARTIFACT_BUCKET = "artifacts"
MODEL_BUCKET = "models"


@functools.cache
def schema_handlers(rtype: str) -> dict[str, list[str]]:
    providers = json.loads((DATA / "schemas/providers/us-east-1.json").read_text())
    schema = json.loads((DATA / f"schemas/resources/{providers[rtype]}.json").read_text())
    return {h: v.get("permissions", []) for h, v in schema.get("handlers", {}).items() if h in ("create", "read", "update", "delete")}


SAR = json.loads((DATA / "AdditionalSpecs/Policies.json").read_text())


def action_resource_types(action: str) -> list[str] | None:
    """The resource types IAM matches the action against (empty: only "*"); None: no such action."""
    service, _, name = action.partition(":")
    entry = SAR.get(service.lower(), {}).get("Actions", {}).get(name.lower())
    if entry is None:
        return None
    return [r.lower() for r in entry.get("Resources", [])]


# Role actions whose requests carry iam:PermissionsBoundary (the role's boundary) and
# iam:PolicyARN (the managed policy), per the Service Authorization Reference for IAM.
BOUNDARY_KEYED = {
    "iam:createrole",
    "iam:putrolepermissionsboundary",
    "iam:deleterolepermissionsboundary",
    "iam:attachrolepolicy",
    "iam:detachrolepolicy",
    "iam:putrolepolicy",
    "iam:deleterolepolicy",
}
POLICY_ARN_KEYED = {"iam:attachrolepolicy", "iam:detachrolepolicy"}


def absent(*path: str):
    def test(props: dict) -> bool:
        node = props
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return True
            node = node[key]
        return False

    test.__doc__ = f"without {'.'.join(path)}"
    return test


def always(props: dict) -> bool:
    """for every resource of the type"""
    return True


# (type, action pattern, applies while, why): handler permissions for features a resource does
# not use. The check re-tests the property for every deployment.
EXCUSED = [
    ("AWS::Lambda::Function", "ec2:Describe*", absent("VpcConfig"), "VPC settings only"),
    ("AWS::Lambda::Function", "ec2:DescribeNetworkInterfaces", absent("VpcConfig"), "a VPC function's network interfaces"),
    ("AWS::Lambda::Function", "elasticfilesystem:*", absent("FileSystemConfigs"), "EFS mounts only"),
    ("AWS::Lambda::Function", "s3files:*", absent("FileSystemConfigs"), "file system mounts only"),
    ("AWS::Lambda::Function", "kms:*", absent("KmsKeyArn"), "a customer-managed key for the environment only"),
    ("AWS::Lambda::Function", "lambda:*CodeSigningConfig", absent("CodeSigningConfigArn"), "code signing only"),
    ("AWS::Lambda::Function", "lambda:GetLayerVersion", absent("Layers"), "layers only"),
    ("AWS::Lambda::Function", "lambda:PassCapacityProvider", absent("CapacityProviderConfig"), "Lambda managed instances only"),
    ("AWS::Lambda::Function", "s3:GetObjectVersion", absent("Code", "S3ObjectVersion"), "a pinned object version only"),
    ("AWS::Lambda::Function", "s3:GetObject*", absent("Code", "S3Bucket"), "zip code in S3 only"),
    ("AWS::Lambda::Function", "lambda:AssociateRuntimeAlias", always, "names no resource of ours: runtime aliases are Lambda's"),
    ("AWS::IAM::Role", "iam:DeleteRolePermissionsBoundary", always,
     "removing the boundary is what the boundary exists to forbid: the role must not be able to"),
    ("AWS::IAM::Policy", "iam:*GroupPolicy", absent("Groups"), "policies on groups only"),
    ("AWS::IAM::Policy", "iam:*UserPolicy", absent("Users"), "policies on users only"),
    ("AWS::Logs::LogGroup", "firehose:*", always, "delivery to Firehose, which no log group here configures"),
    ("AWS::Logs::LogGroup", "logs:PutBearerTokenAuthentication", absent("BearerTokenAuthenticationEnabled"), "bearer-token ingestion only"),
    ("AWS::Logs::LogGroup", "logs:PutLogGroupDeletionProtection", absent("DeletionProtectionEnabled"), "deletion protection only"),
    ("AWS::Logs::LogGroup", "logs:*KmsKey", absent("KmsKeyId"), "a customer-managed key only"),
    ("AWS::Logs::LogGroup", "logs:PutDataProtectionPolicy", absent("DataProtectionPolicy"), "a data protection policy only"),
    ("AWS::Logs::LogGroup", "logs:DeleteDataProtectionPolicy", absent("DataProtectionPolicy"), "a data protection policy only"),
    ("AWS::Logs::LogGroup", "logs:*IndexPolicy", absent("FieldIndexPolicies"), "field index policies only"),
    ("AWS::Logs::LogGroup", "logs:*ResourcePolicy", absent("ResourcePolicyDocument"), "a resource policy only"),
    ("AWS::Logs::LogGroup", "logs:CreateLogDelivery", absent("ResourcePolicyDocument"), "vended log delivery settings only"),
    ("AWS::S3::Bucket", "s3tables:*", absent("MetadataTableConfiguration"), "S3 Tables metadata only"),
    ("AWS::S3::Bucket", "s3:*MetadataTableConfiguration", absent("MetadataTableConfiguration"), "metadata tables only"),
    ("AWS::S3::Bucket", "s3:*MetadataTableConfiguration", absent("MetadataConfiguration"), "metadata tables only"),
    ("AWS::S3::Bucket", "s3:UpdateBucketMetadata*", absent("MetadataConfiguration"), "metadata tables only"),
    ("AWS::S3::Bucket", "s3:DeleteObject", absent("MetadataTableConfiguration"), "metadata table set-up only"),
    ("AWS::S3::Bucket", "s3:PutObjectAcl", absent("AccessControl"), "canned ACLs only (ownership is BucketOwnerEnforced)"),
    ("AWS::S3::Bucket", "s3:PutBucketAcl", absent("AccessControl"), "canned ACLs only (ownership is BucketOwnerEnforced)"),
    ("AWS::S3::Bucket", "iam:PassRole", absent("ReplicationConfiguration"), "a replication role only"),
    ("AWS::StepFunctions::StateMachine", "s3:GetObject*", absent("DefinitionS3Location"), "a definition in S3 only"),
    ("AWS::StepFunctions::StateMachine", "kms:*", absent("EncryptionConfiguration"), "a customer-managed key only"),
    ("AWS::SNS::Topic", "iam:*", absent("DeliveryStatusLogging"), "delivery status logging roles only"),
    ("AWS::SNS::Subscription", "iam:*", absent("SubscriptionRoleArn"), "Firehose subscriptions' role only"),
    ("AWS::ApiGateway::Method", "iam:PassRole", absent("Integration", "Credentials"), "integration credentials only"),
    ("AWS::ApiGateway::RestApi", "iam:PassRole", absent("Body"), "an imported OpenAPI definition's credentials only"),
    ("AWS::ApiGateway::RestApi", "s3:GetObject", absent("BodyS3Location"), "an OpenAPI definition in S3 only"),
    ("AWS::Lambda::Alias", "codedeploy:*", absent("UpdatePolicy", "CodeDeployLambdaAliasUpdate"),
     "an alias that CodeDeploy shifts (its UpdatePolicy) only: the others are updated in place"),
    ("AWS::CodeDeploy::DeploymentGroup", "codedeploy:RegisterOnPremisesInstance", always,
     "on-premises instances: the group is a Lambda one (its application's ComputePlatform)"),
]

# Requirements the schemas leave out, from the services' documentation.
DOCUMENTED = [
    (
        "AWS::Lambda::Function",
        lambda props: "ImageUri" in props.get("Code", {}),
        ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:GetRepositoryPolicy", "ecr:SetRepositoryPolicy"],
        "Lambda, 'Create a function using a container image', permissions: whoever creates or updates "
        "the function needs these on the repository (Lambda adds itself to the repository policy)",
    ),
]


@dataclass(frozen=True)
class Request:
    action: str
    resource: str
    context: tuple = ()
    source: str = field(default="", compare=False)


# --- IAM's evaluation ----------------------------------------------------------------------


@functools.cache
def wildcard(pattern: str, value: str, fold: bool) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if fold else re.DOTALL) is not None


def listed(value) -> list:
    return value if isinstance(value, list) else [value]


def allowed(statements: list[dict], r: Request) -> bool:
    """IAM's decision (iam_policy.py, the rehearsal's one model of it) for one request."""
    return iam_policy.decide([{"Statement": statements}], r.action, r.resource, dict(r.context)) == iam_policy.ALLOW


# --- the execution role, from bootstrap.yaml ---------------------------------------------------


def bootstrap_values(bootstrap: dict) -> tuple[dict, dict]:
    """The bootstrap stack's parameter values and the physical ids of its resources."""
    values = {k: str(v.get("Default", "")) for k, v in bootstrap.get("Parameters", {}).items()}
    values["GitHubRepository"] = "owner/repo"
    physical = {"AWS::StackName": BOOTSTRAP_STACK, "AWS::AccountId": ACCOUNT, "AWS::Region": REGION}
    for name, res in bootstrap["Resources"].items():
        t = res["Type"]
        if t == "AWS::S3::Bucket":
            bucket = {"ArtifactBucket": ARTIFACT_BUCKET, "ModelBucket": MODEL_BUCKET}.get(name, f"{BOOTSTRAP_STACK}-{name}-{SUFFIX}".lower())
            physical.update({name: bucket, f"{name}.Arn": f"arn:aws:s3:::{bucket}"})
        elif t == "AWS::IAM::Role":
            role = generated(BOOTSTRAP_STACK, name)
            physical.update({name: role, f"{name}.Arn": f"arn:aws:iam::{ACCOUNT}:role/{role}"})
        elif t == "AWS::IAM::ManagedPolicy":
            policy = res["Properties"].get("ManagedPolicyName", f"{BOOTSTRAP_STACK}-{name}-{SUFFIX}")
            physical[name] = policy  # resolved below, once the parameters are known
    return values, physical


def execution_role(resolver_cls, bootstrap_path: Path, role: str = "CloudFormationExecutionRole") -> tuple[list[dict], dict]:
    """The statements of every identity policy of the role, resolved, and the bootstrap's ids."""
    bootstrap = yaml_parse(bootstrap_path.read_text())
    values, physical = bootstrap_values(bootstrap)
    template = {"Resources": bootstrap["Resources"], "Conditions": bootstrap.get("Conditions", {}), "_values": values}
    first = resolver_cls(template, physical)
    for name, res in bootstrap["Resources"].items():
        if res["Type"] == "AWS::IAM::ManagedPolicy":
            policy = first.resolve(res["Properties"].get("ManagedPolicyName", physical[name]))
            physical[name] = f"arn:aws:iam::{ACCOUNT}:policy{res['Properties'].get('Path', '/')}{policy}"
    resolver = resolver_cls(template, physical)
    props = bootstrap["Resources"][role]["Properties"]
    documents = [p["PolicyDocument"] for p in resolver.resolve(props.get("Policies", []))]
    attached = set(resolver.resolve(props.get("ManagedPolicyArns", [])))
    for name, res in bootstrap["Resources"].items():
        if res["Type"] == "AWS::IAM::ManagedPolicy" and physical[name] in attached:
            documents.append(resolver.resolve(res["Properties"]["PolicyDocument"]))
        if res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            if {"Ref": role} in res["Properties"].get("Roles", []):
                documents.append(resolver.resolve(res["Properties"]["PolicyDocument"]))
    statements = [s for d in documents for s in listed(d["Statement"])]
    return statements, physical


def managed_policies(resolver_cls, bootstrap_path: Path) -> dict[str, list[dict]]:
    """The bootstrap's managed policies (the roles' boundary among them): ARN -> statements."""
    bootstrap = yaml_parse(bootstrap_path.read_text())
    values, _ = bootstrap_values(bootstrap)
    _, physical = execution_role(resolver_cls, bootstrap_path)
    resolver = resolver_cls({"Resources": bootstrap["Resources"], "Conditions": bootstrap.get("Conditions", {}), "_values": values}, physical)
    return {
        physical[name]: listed(resolver.resolve(res["Properties"]["PolicyDocument"])["Statement"])
        for name, res in bootstrap["Resources"].items()
        if res["Type"] == "AWS::IAM::ManagedPolicy"
    }


def beyond_boundary(role: str, props: dict, boundaries: dict[str, list[dict]]) -> list[str]:
    """What a role's own policies allow that its permissions boundary does not: IAM grants only
    what both allow ("Permissions boundaries for IAM entities"), so such a grant is dead and the
    code relying on it fails at run time."""
    boundary = props.get("PermissionsBoundary")
    if not boundary:
        return []
    if boundary not in boundaries:
        return [f"{role}: boundary {boundary} is not one of bootstrap's policies"]
    out = []
    for policy in props.get("Policies", []):
        for st in listed(policy["PolicyDocument"]["Statement"]):
            if st.get("Effect") != "Allow" or "Action" not in st or "Resource" not in st:
                continue
            for action in listed(st["Action"]):
                for resource in listed(st["Resource"]):
                    if not allowed(boundaries[boundary], Request(action, str(resource))):
                        out.append(f"{role} ({policy['PolicyName']}): {action} on {resource} is outside its boundary")
    return out


def create_in_moto(iam, resolver_cls, bootstrap_path: Path, role: str = "CloudFormationExecutionRole") -> str:
    """The execution role and its boundary policy created in moto as bootstrap.yaml defines
    them; returns the role's ARN (what deploy.sh passes as --role-arn)."""
    bootstrap = yaml_parse(bootstrap_path.read_text())
    statements, physical = execution_role(resolver_cls, bootstrap_path, role)
    values, _ = bootstrap_values(bootstrap)
    resolver = resolver_cls({"Resources": bootstrap["Resources"], "Conditions": bootstrap.get("Conditions", {}), "_values": values}, physical)
    for name, res in bootstrap["Resources"].items():
        if res["Type"] == "AWS::IAM::ManagedPolicy":
            iam.create_policy(
                PolicyName=physical[name].rsplit("/", 1)[1],
                PolicyDocument=json.dumps(resolver.resolve(res["Properties"]["PolicyDocument"])),
            )
    props = bootstrap["Resources"][role]["Properties"]
    name = physical[role]
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(resolver.resolve(props["AssumeRolePolicyDocument"])))
    iam.put_role_policy(
        RoleName=name,
        PolicyName="release-stacks",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    return physical[f"{role}.Arn"]


# --- the release stacks' resources and their ARNs ---------------------------------------------


def generated(stack: str, logical: str, limit: int = 64) -> str:
    return f"{stack}-{logical}"[: limit - len(SUFFIX) - 1] + f"-{SUFFIX}"


def fn_arn(name_or_arn: str) -> str:
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name_or_arn}"


def physical_ids(template: dict, stack: str, resolver_cls) -> dict[str, str]:
    """What Ref and Fn::GetAtt give for each resource in a stack of this name."""
    early = resolver_cls(template, {"AWS::StackName": stack, "AWS::AccountId": ACCOUNT, "AWS::Region": REGION})
    out = {"AWS::StackName": stack, "AWS::AccountId": ACCOUNT, "AWS::Region": REGION}

    def named(props: dict, key: str, logical: str, limit: int = 64) -> str:
        return str(early.resolve(props[key])) if key in props else generated(stack, logical, limit)

    ids = itertools.count(1)
    for name, res in template["Resources"].items():
        t, props = res["Type"], res.get("Properties", {})
        arn = None
        if t == "AWS::Lambda::Function":
            ref = named(props, "FunctionName", name)
            arn = fn_arn(ref)
        elif t == "AWS::IAM::Role":
            ref = named(props, "RoleName", name)
            arn = f"arn:aws:iam::{ACCOUNT}:role{props.get('Path', '/')}{ref}"
            out[f"{name}.RoleId"] = f"AROA{name.upper()}"
        elif t == "AWS::S3::Bucket":
            ref = named(props, "BucketName", name, 63).lower()
            arn = f"arn:aws:s3:::{ref}"
        elif t == "AWS::Logs::LogGroup":
            ref = named(props, "LogGroupName", name, 512)
            arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{ref}:*"
        elif t == "AWS::SNS::Topic":
            topic = named(props, "TopicName", name, 256)
            ref = f"arn:aws:sns:{REGION}:{ACCOUNT}:{topic}"
            out[f"{name}.TopicName"] = topic
            out[f"{name}.TopicArn"] = ref
        elif t == "AWS::StepFunctions::StateMachine":
            sm = named(props, "StateMachineName", name, 80)
            ref = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{sm}"
            out[f"{name}.Name"] = sm
        elif t == "AWS::CloudWatch::Alarm":
            ref = named(props, "AlarmName", name, 255)
            arn = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{ref}"
        elif t == "AWS::KMS::Key":
            ref = f"key-{next(ids):08d}"
            arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{ref}"
        elif t == "AWS::CodeDeploy::Application":
            ref = named(props, "ApplicationName", name, 100)
        elif t == "AWS::CodeDeploy::DeploymentGroup":
            ref = named(props, "DeploymentGroupName", name, 100)
        elif t == "AWS::ApiGateway::RestApi":
            ref = f"api{next(ids):07d}"
            out[f"{name}.RootResourceId"] = f"root{next(ids):06d}"
        elif t == "AWS::ApiGateway::Stage":
            ref = str(early.resolve(props.get("StageName", name)))
        elif t == "AWS::SNS::Subscription":
            ref = f"arn:aws:sns:{REGION}:{ACCOUNT}:subscription-{next(ids)}"
        else:
            ref = f"{name.lower()}{next(ids):04d}"
        out[name] = ref
        if arn:
            out[f"{name}.Arn"] = arn
    # Versions and aliases need their function's name.
    for name, res in template["Resources"].items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Lambda::Version":
            function = props["FunctionName"]["Ref"]
            out[name] = f"{out[f'{function}.Arn']}:1"
            out[f"{name}.Version"] = "1"
        elif res["Type"] == "AWS::Lambda::Alias":
            function = props["FunctionName"]["Ref"]
            out[name] = f"{out[f'{function}.Arn']}:{props['Name']}"
            out[f"{name}.AliasArn"] = out[name]
        elif res["Type"] == "AWS::Lambda::Url":
            out[f"{name}.FunctionUrl"] = "https://url.lambda-url.us-east-1.on.aws/"
            out[f"{name}.FunctionArn"] = "arn:aws:lambda:us-east-1:123456789012:function:url"
    return out


def resource_arns(t: str, logical: str, props: dict, ids: dict, template: dict, resolver) -> dict[str, list[str]]:
    """The ARNs one resource's handlers act on, by the Service Authorization Reference's resource
    type names (lower-cased)."""
    arns: dict[str, list[str]] = {}

    def add(kind: str, *values: str) -> None:
        arns.setdefault(kind, []).extend(v for v in values if v)

    apigw = f"arn:aws:apigateway:{REGION}::"
    if t == "AWS::Lambda::Function":
        add("function", ids[f"{logical}.Arn"])
        add("role", props.get("Role"))
        code = props.get("Code", {})
        if "S3Bucket" in code:
            add("object", f"arn:aws:s3:::{code['S3Bucket']}/{code['S3Key']}")
        if "ImageUri" in code:
            host, _, path = code["ImageUri"].partition("/")
            repo = re.split(r"[:@]", path)[0]
            add("repository", f"arn:aws:ecr:{host.split('.')[3]}:{host.split('.')[0]}:repository/{repo}")
    elif t in ("AWS::Lambda::Version", "AWS::Lambda::Alias"):
        function = props["FunctionName"]
        add("function", fn_arn(str(function)), ids[logical])
        add("function version" if t == "AWS::Lambda::Version" else "function alias", ids[logical])
        if t == "AWS::Lambda::Alias":
            update = template["Resources"][logical].get("UpdatePolicy", {}).get("CodeDeployLambdaAliasUpdate")
            if update:
                update = resolver.resolve(update)
                app, group = update["ApplicationName"], update["DeploymentGroupName"]
                add("application", f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:application:{app}")
                add("deploymentgroup", f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:deploymentgroup:{app}/{group}")
                for res in template["Resources"].values():
                    if res["Type"] == "AWS::CodeDeploy::DeploymentGroup":
                        config = resolver.resolve(res["Properties"].get("DeploymentConfigName", "CodeDeployDefault.LambdaAllAtOnce"))
                        add("deploymentconfig", f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:deploymentconfig:{config}")
    elif t == "AWS::Lambda::Permission":
        target = str(props["FunctionName"])
        add("function", fn_arn(target), fn_arn(target).rsplit(":", 1)[0] if target.count(":") > 6 else "")
    elif t == "AWS::Lambda::Url":
        target = str(props["TargetFunctionArn"])
        add("function", fn_arn(target), fn_arn(target).rsplit(":", 1)[0] if target.count(":") > 6 else "")
    elif t == "AWS::IAM::Role":
        add("role", ids[f"{logical}.Arn"])
    elif t == "AWS::IAM::Policy":
        for role in props.get("Roles", []):
            add("role", f"arn:aws:iam::{ACCOUNT}:role/{role}")
    elif t == "AWS::Logs::LogGroup":
        name = ids[logical]
        add("log-group", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{name}:*")
    elif t == "AWS::S3::Bucket":
        add("bucket", ids[f"{logical}.Arn"])
        add("object", f"{ids[f'{logical}.Arn']}/*")
    elif t == "AWS::S3::BucketPolicy":
        add("bucket", f"arn:aws:s3:::{props['Bucket']}")
    elif t == "AWS::SNS::Topic":
        add("topic", ids[logical])
    elif t == "AWS::SNS::Subscription":
        add("topic", props["TopicArn"])
    elif t == "AWS::SNS::TopicPolicy":
        add("topic", *props["Topics"])
    elif t == "AWS::CloudWatch::Alarm":
        add("alarm", ids[f"{logical}.Arn"])
    elif t == "AWS::StepFunctions::StateMachine":
        add("statemachine", ids[logical])
        add("role", props.get("RoleArn"))
    elif t == "AWS::CodeDeploy::Application":
        add("application", f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:application:{ids[logical]}")
    elif t == "AWS::CodeDeploy::DeploymentGroup":
        app = props["ApplicationName"]
        add("application", f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:application:{app}")
        add("deploymentgroup", f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:deploymentgroup:{app}/{ids[logical]}")
        config = props.get("DeploymentConfigName", "CodeDeployDefault.LambdaAllAtOnce")
        add("deploymentconfig", f"arn:aws:codedeploy:{REGION}:{ACCOUNT}:deploymentconfig:{config}")
        add("role", props.get("ServiceRoleArn"))
    elif t == "AWS::KMS::Key":
        add("key", ids[f"{logical}.Arn"])
    elif t == "AWS::KMS::Alias":
        add("alias", f"arn:aws:kms:{REGION}:{ACCOUNT}:{props['AliasName']}")
        target = str(props["TargetKeyId"])
        add("key", target if target.startswith("arn:") else f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{target}")
    elif t.startswith("AWS::ApiGateway::"):
        api = props.get("RestApiId") or (props["ApiStages"][0]["ApiId"] if "ApiStages" in props else None)
        kind = t.split("::")[2]
        if api:
            add("restapi", f"{apigw}/restapis/{api}")
        if kind == "RestApi":
            add("restapi", f"{apigw}/restapis/{ids[logical]}")
            add("restapis", f"{apigw}/restapis")
        elif kind == "Resource":
            add("resource", f"{apigw}/restapis/{api}/resources/{ids[logical]}")
            add("resources", f"{apigw}/restapis/{api}/resources")
        elif kind == "Method":
            resource = props["ResourceId"]
            add("method", f"{apigw}/restapis/{api}/resources/{resource}/methods/{props['HttpMethod']}")
            add("integration", f"{apigw}/restapis/{api}/resources/{resource}/methods/{props['HttpMethod']}/integration")
        elif kind == "Deployment":
            add("deployment", f"{apigw}/restapis/{api}/deployments/{ids[logical]}")
            add("deployments", f"{apigw}/restapis/{api}/deployments")
        elif kind == "Stage":
            add("stage", f"{apigw}/restapis/{api}/stages/{ids[logical]}")
            add("stages", f"{apigw}/restapis/{api}/stages")
        elif kind == "ApiKey":
            add("apikey", f"{apigw}/apikeys/{ids[logical]}")
            add("apikeys", f"{apigw}/apikeys")
        elif kind == "UsagePlan":
            add("usageplan", f"{apigw}/usageplans/{ids[logical]}")
            add("usageplans", f"{apigw}/usageplans")
        elif kind == "UsagePlanKey":
            plan = props["UsagePlanId"]
            add("usageplankey", f"{apigw}/usageplans/{plan}/keys/{props['KeyId']}")
            add("usageplankeys", f"{apigw}/usageplans/{plan}/keys")
        elif kind == "Account":
            add("account", f"{apigw}/account")
            add("role", props.get("CloudWatchRoleArn"))
        # Tagging calls (PUT/DELETE /tags/{arn}) name the resource's ARN, URL-encoded.
        own = next((v[0] for k, v in arns.items() if k not in ("restapi", "role") and not k.endswith("s")), None)
        if own:
            add("tags", f"{apigw}/tags/{urllib.parse.quote(own, safe='')}")
    return arns


PASSED_TO = {
    "AWS::Lambda::Function": "lambda.amazonaws.com",
    "AWS::StepFunctions::StateMachine": "states.amazonaws.com",
    "AWS::CodeDeploy::DeploymentGroup": "codedeploy.amazonaws.com",
    "AWS::ApiGateway::Account": "apigateway.amazonaws.com",
}


def requests_of(t: str, logical: str, props: dict, ids: dict, template: dict, resolver, roles: dict) -> tuple[list[Request], list[str], list[str]]:
    """A resource's requests, the permissions excused (why), and those with no derivable ARN."""
    arns = resource_arns(t, logical, props, ids, template, resolver)
    out, excused, unknown = [], [], []
    permissions = [(h, a) for h, actions in schema_handlers(t).items() for a in actions]
    for rtype, test, actions, _why in DOCUMENTED:
        if rtype == t and test(props):
            permissions += [("documented", a) for a in actions]
    # The resource's own UpdatePolicy decides whether an alias update goes through CodeDeploy.
    tested = dict(props, UpdatePolicy=template["Resources"][logical].get("UpdatePolicy", {}))
    for handler, action in permissions:
        why = next((w for rt, pat, test, w in EXCUSED if rt == t and wildcard(pat, action, True) and test(tested)), None)
        if why:
            excused.append(f"{t} {action}: {why}")
            continue
        kinds = action_resource_types(action)
        if kinds is None:
            excused.append(f"{t} {action}: no such IAM action in the Service Authorization Reference")
            continue
        targets = ["*"] if not kinds else [a for k in kinds for a in arns.get(k, [])]
        if not targets:
            unknown.append(f"{t} {logical} {handler}: {action} acts on {kinds}, and this check derives none of them")
            continue
        for target in dict.fromkeys(targets):
            context = {}
            a = action.lower()
            if a == "iam:passrole":
                context["iam:PassedToService"] = PASSED_TO.get(t, "")
            if a in BOUNDARY_KEYED and target in roles and roles[target].get("PermissionsBoundary"):
                context["iam:PermissionsBoundary"] = roles[target]["PermissionsBoundary"]
            if a in POLICY_ARN_KEYED:
                for policy in roles.get(target, {}).get("ManagedPolicyArns", []) or [""]:
                    out.append(Request(action, target, tuple(sorted({**context, "iam:PolicyARN": policy}.items())), f"{t} {handler}"))
                continue
            out.append(Request(action, target, tuple(sorted(context.items())), f"{t} {handler}"))
    return out, excused, unknown


def deployments(template: dict) -> list[dict[str, str]]:
    """Every combination of values for the parameters the conditions read (the default and one
    other value each; every allowed value where AllowedValues lists them)."""
    names = sorted(set(re.findall(r'"Ref": "([A-Za-z0-9]+)"', json.dumps(template.get("Conditions", {})))))
    choices = []
    for name in names:
        spec = template["Parameters"][name]
        default = str(spec.get("Default", ""))
        if "AllowedValues" in spec:
            values = [str(v) for v in spec["AllowedValues"]]
        elif name == "ImageUri":
            values = [default, "123456789012.dkr.ecr.us-east-1.amazonaws.com/infer:1"]
        elif spec.get("Type") == "Number":
            values = [default, "-1" if default != "-1" else "10"]
        else:
            values = [default, {"ModelBucketName": MODEL_BUCKET}.get(name, "models/m.onnx" if default == "" else "")]
        choices.append([(name, v) for v in dict.fromkeys(values)])
    return [dict(c) for c in itertools.product(*choices)]


def check(transformed, resolver_cls, bootstrap: Path) -> tuple[list[str], list[str], int]:
    """(missing permissions, excused ones, requests evaluated)."""
    statements, boot = execution_role(resolver_cls, bootstrap)
    boundary_names = {k: v for k, v in boot.items() if v.startswith("arn:aws:iam::") and ":policy/" in v}
    missing: dict[str, dict[str, set]] = {}
    excused: set[str] = set()
    unknown: set[str] = set()
    evaluated = 0
    verdicts: dict[Request, bool] = {}
    boundaries = managed_policies(resolver_cls, bootstrap)
    outside: set[str] = set()
    for package in ("Zip", "Image"):
        base = transformed({"PackageType": package, "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/infer:1", "ReleaseId": "r"})
        for values in deployments(base):
            if values.get("PackageType", package) != package:
                continue
            if package == "Image" and not values.get("ImageUri"):
                continue
            for stack in STACKS:
                # Deployed with the bootstrap's boundary and model bucket where the template asks.
                extra = {k: v for k, v in {"RoleBoundaryArn": next(iter(boundary_names.values()), "")}.items() if k in base["Parameters"]}
                template = dict(base, _values={**base["_values"], **values, **extra})
                ids = physical_ids(template, stack, resolver_cls)
                resolver = resolver_cls(template, ids)
                active = {n: r for n, r in template["Resources"].items() if "Condition" not in r or resolver.condition(r["Condition"])}
                resolved = {n: resolver.resolve(r.get("Properties", {})) for n, r in active.items()}
                roles = {ids[f"{n}.Arn"]: resolved[n] for n, r in active.items() if r["Type"] == "AWS::IAM::Role"}
                label = f"{stack} {' '.join(f'{k}={v}' for k, v in sorted(values.items()))}"
                for n, r in active.items():
                    if r["Type"] == "AWS::IAM::Role":
                        outside.update(beyond_boundary(n, resolved[n], boundaries))
                for name, r in active.items():
                    reqs, exc, unk = requests_of(r["Type"], name, resolved[name], ids, template, resolver, roles)
                    excused.update(exc)
                    unknown.update(unk)
                    for req in reqs:
                        evaluated += 1
                        if req not in verdicts:
                            verdicts[req] = allowed(statements, req)
                        if not verdicts[req]:
                            missing.setdefault(req.action, {}).setdefault(req.source, set()).add((req, label))
    lines = sorted(unknown) + sorted(outside)
    for action, sources in sorted(missing.items()):
        first = min((r for found in sources.values() for r in found), key=lambda f: (f[0].resource, f[1]))
        context = "".join(f" [{k}={v}]" for k, v in first[0].context)
        count = len({label for found in sources.values() for _, label in found})
        lines.append(
            f"{action} ({', '.join(sorted(sources))}) on {first[0].resource}{context}: "
            f"denied in {count} deployment(s), e.g. {first[1]}"
        )
    return lines, sorted(excused), evaluated
