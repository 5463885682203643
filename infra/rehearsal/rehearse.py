"""The deploy rehearsal: runs what a release runs, offline, as far as anything but AWS allows.

Python because what it drives is: the SAM CLI, the SAM translator, moto and botocore, in one
environment.

`cargo xtask test` runs it with the SAM CLI's virtual environment (aws-sam-cli, its SAM
translator, boto3 and moto, pinned in xtask/src/tools.rs). Every step must pass:

1. `infra/deploy.sh validate|package|deploy` for staging and production, the very commands and
   samconfig of the deploy workflow, against moto (S3 and CloudFormation on loopback): validate
   and package exit 0, and deploy creates its change set (`--no-execute-changeset`: moto does
   not run the SAM transform, only CloudFormation does), with bootstrap's execution role
   (created in moto from bootstrap.yaml) passed as --role-arn and its boundary as RoleBoundaryArn.
2. Releases: the template transformed by the SAM translator with the release ids that
   `infra/release-id.sh` gives two releases that differ only in the model key, or only in one
   parameter, publishes two different Lambda versions; the same release, the same version.
   For every parameter, a changed value keeps the version or changes the function's versioned
   configuration, and the reverse (release_versions.py).
   The execution role allows every resource handler's permissions in every deployment
   (handler_permissions.py).
3. The release path: production shifts traffic by canary and staging all at once, CodeDeploy
   rolls back on the errors, 5xx and duration alarms, every alarm notifies the stack's topic,
   the function URL needs IAM by default. The workflows (workflow_jobs.py): every way a release
   starts (push to main, pull request, train.yml, deploy.yml by hand, and with a job failing)
   runs the jobs a release needs, in order, under GitHub's documented rules for needs, if and
   skipped jobs, and each job's OIDC token is one its role's trust policy admits. The deploy
   roles (release_roles.py), as IAM evaluates them, allow every call of their job (both invoke
   actions of an AWS_IAM function URL among them) and nothing of the other environment.
4. The function role: the policy the transformed template gives the role, resolved for a
   model key, is enforced by moto with IAM on; `infer serve` with credentials bound to exactly
   that policy loads `s3://bucket/key` with its sidecar and without it. The same policy without
   the sidecar statement must make the load fail, or this check proves nothing.
5. The smoke test (`infra/smoke.sh`) against a local `infer serve` passes with the model's
   sha256 and fails with another one. Its signed path (AWS_IAM) passes through a loopback
   function URL (function_url.py) that recomputes each SigV4 signature with botocore and
   requires both invoke actions of the staging role's policy on the alias; a wrong secret, no
   signature, or the policy with InvokeFunction denied must be refused.
6. The stack's own resources under AWS's documented rules (stack_rules.py), and the PreTraffic
   hook's code against `infer` in Lambda mode (hook_run.py); see those files.

Usage: rehearse.py --infer target/debug/infer --package target/lambda/infer-arm64.zip [--only STEP ...]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3
import cfn_intrinsics
import function_url
import handler_permissions
import hook_run
import release_roles
import release_versions
import sam_transform
import stack_rules
import workflow_jobs
from samtranslator.yaml_helper import yaml_parse

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TEMPLATE = INFRA / "template.yaml"
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
MODEL = ROOT / "models" / "resnet18-cifar10.onnx"
# The translator's notes on its feature toggles and metrics are not about this template.
logging.getLogger("samtranslator").setLevel(logging.ERROR)


class Failed(Exception):
    """A rehearsal step found the release path broken."""


def step(name):
    def wrap(fn):
        def run(*args, **kwargs):
            started = time.monotonic()
            print(f"rehearsal: == {name} ==", flush=True)
            fn(*args, **kwargs)
            print(f"rehearsal: {name}: passed in {time.monotonic() - started:.1f}s", flush=True)

        return run

    return wrap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise Failed(f"{what} did not listen on port {port} within {seconds}s")


class Moto:
    """moto's server on loopback. `localhost` in the endpoint lets its CloudFormation read
    templates that sam uploaded to its S3 (it parses path-style URLs only for that host)."""

    def __init__(self, iam: bool = False):
        self.port = free_port()
        self.endpoint = f"http://localhost:{self.port}"
        env = dict(os.environ, MOTO_S3_CUSTOM_ENDPOINTS=self.endpoint)
        bin_dir = Path(sys.executable).parent
        self.proc = subprocess.Popen(
            [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        wait_port(self.port, "moto_server")
        self.iam = iam

    def env(self, key: str = "testing", secret: str = "testing") -> dict:
        env = dict(os.environ)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            env.pop(name, None)
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID=key,
            AWS_SECRET_ACCESS_KEY=secret,
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_EC2_METADATA_DISABLED="true",
            SAM_CLI_TELEMETRY="0",
        )
        return env

    def client(self, service: str, key: str = "testing", secret: str = "testing"):
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def enforce_iam(self) -> None:
        """From now on every request needs credentials that IAM allows (moto's own switch)."""
        req = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            # Not a form: moto reads the raw body, which Flask leaves empty for form types.
            headers={"Content-Type": "text/plain"},
        )
        urllib.request.urlopen(req, timeout=10).read()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def run(cmd: list[str], env: dict, what: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise Failed(f"{what} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out.stdout


# --- the SAM transform, as CloudFormation runs it for one deployment ---------------------------


def transformed(parameters: dict[str, str]) -> dict:
    try:
        out, values = sam_transform.transformed(TEMPLATE, parameters)
    except KeyError as e:
        raise Failed(str(e)) from e
    out["_values"] = values
    return out


def release_id(package: Path, parameters: dict[str, str]) -> str:
    pairs = [f"{k}={v}" for k, v in parameters.items()]
    out = subprocess.run(
        [str(INFRA / "release-id.sh"), str(package), *pairs], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise Failed(f"release-id.sh failed: {out.stderr}")
    return out.stdout.strip()


def version_of(template: dict, function: str = "ZipFunction") -> str:
    versions = [
        name
        for name, r in template["Resources"].items()
        if r["Type"] == "AWS::Lambda::Version" and name.startswith(f"{function}Version")
    ]
    if len(versions) != 1:
        raise Failed(f"expected one version of {function}, found {versions}")
    return versions[0]


class Resolver(cfn_intrinsics.Resolver):
    """The intrinsics of one deployment of the rehearsal: its account and region, `_values` as
    the parameters, resources named `physical` or else after themselves."""

    def __init__(self, template: dict, physical: dict[str, str]):
        super().__init__(template, template["_values"], "rehearsal", REGION, ACCOUNT)
        # Resources this check does not look into still resolve, to names of their own.
        for name in template["Resources"]:
            self.values.setdefault(name, name.lower())
            self.values.setdefault(f"{name}.Arn", f"arn:aws:rehearsal:::{name.lower()}")
        self.values.update(physical)

    def fail(self, what: str) -> Exception:
        return Failed(what)


def role_policy(template: dict, physical: dict[str, str], name: str) -> dict:
    role = template["Resources"]["FunctionRole"]["Properties"]
    policies = Resolver(template, physical).resolve(role["Policies"])
    for policy in policies:
        if policy["PolicyName"] == name:
            return policy["PolicyDocument"]
    raise Failed(f"the function role has no policy {name!r} in this deployment")


# --- the steps ---------------------------------------------------------------------------------


@step("sam validate, package and deploy (change set) against moto, staging and production")
def sam_commands(package: Path) -> None:
    moto = Moto()
    try:
        env = moto.env()
        s3 = moto.client("s3")
        for bucket in ("artifacts", "models"):
            s3.create_bucket(Bucket=bucket)
        env.update(ARTIFACT_BUCKET="artifacts", MODEL_BUCKET="models", MODEL_KEY="models/m.onnx", PACKAGE=str(package))
        # As the deploy workflow: CloudFormation acts as bootstrap's execution role.
        role = handler_permissions.create_in_moto(moto.client("iam"), Resolver, INFRA / "bootstrap.yaml")
        env.update(CFN_EXECUTION_ROLE_ARN=role)
        deploy = str(INFRA / "deploy.sh")
        with tempfile.TemporaryDirectory() as tmp:
            for stage in ("staging", "production"):
                run([deploy, "validate", stage], env, f"deploy.sh validate {stage}")
                out = Path(tmp) / f"packaged-{stage}.yaml"
                run([deploy, "package", stage, str(out)], env, f"deploy.sh package {stage}")
                packaged = yaml_parse(out.read_text())
                code = packaged["Resources"]["ZipFunction"]["Properties"]["CodeUri"]
                if not str(code).startswith("s3://artifacts/"):
                    raise Failed(f"sam package left CodeUri {code!r}")
                key = str(code).removeprefix("s3://artifacts/")
                uploaded = s3.get_object(Bucket="artifacts", Key=key)["Body"].read()
                if uploaded != package.read_bytes():
                    raise Failed(f"{code} does not hold the package {package}")
                log = run([deploy, "deploy", stage, "--no-execute-changeset"], env, f"deploy.sh deploy {stage}")
                if "Changeset created successfully" not in log:
                    raise Failed(f"deploy.sh deploy {stage} created no change set:\n{log}")
                shift = "AllAtOnce" if stage == "staging" else "Canary10Percent5Minutes"
                cfn = moto.client("cloudformation")
                stack = "resnet-serverless-staging" if stage == "staging" else "resnet-serverless"
                sets = cfn.list_change_sets(StackName=stack)["Summaries"]
                described = cfn.describe_change_set(StackName=stack, ChangeSetName=sets[-1]["ChangeSetId"])
                params = {p["ParameterKey"]: p["ParameterValue"] for p in described["Parameters"]}
                expect = {"TrafficShift": shift, "ModelKey": "models/m.onnx", "ModelBucketName": "models"}
                for key, value in expect.items():
                    if params.get(key) != value:
                        raise Failed(f"{stage} change set has {key}={params.get(key)!r}, expected {value!r}")
                if len(params.get("ReleaseId", "")) != 32:
                    raise Failed(f"{stage} change set has no release id: {params}")
                boundary = f"arn:aws:iam::{ACCOUNT}:policy/resnet-serverless-role-boundary"
                if params.get("RoleBoundaryArn") != boundary:
                    raise Failed(f"{stage} change set has RoleBoundaryArn={params.get('RoleBoundaryArn')!r}, not bootstrap's {boundary}")
                used = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("RoleARN")
                if used != role:
                    raise Failed(f"{stage}: CloudFormation acts as {used!r}, not the execution role {role} (--role-arn)")
    finally:
        moto.close()


@step("every release publishes its own version")
def versions(package: Path) -> None:
    def version(parameters):
        parameters = dict(parameters, ReleaseId=release_id(package, parameters))
        return version_of(transformed(parameters))

    base = {"ModelKey": "models/a.onnx", "TrafficShift": "Canary10Percent5Minutes"}
    first = version(base)
    if version(base) != first:
        raise Failed("the same release published two versions")
    if version(dict(base, ModelKey="models/b.onnx")) == first:
        raise Failed("a release with another model key keeps the old version: `live` would keep the old model")
    if version(dict(base, MemorySize="2048")) == first:
        raise Failed("a release with another MemorySize keeps the old version")


def bootstrap_roles() -> release_roles.Roles:
    """infra/bootstrap.yaml resolved for a repository, with ARNs as IAM would name its resources."""
    template = yaml_parse((INFRA / "bootstrap.yaml").read_text())
    template["_values"] = {k: v.get("Default", "") for k, v in template["Parameters"].items()}
    template["_values"]["GitHubRepository"] = workflow_jobs.REPOSITORY
    physical = {}
    for name, r in template["Resources"].items():
        kind = r["Type"]
        if kind == "AWS::IAM::Role":
            physical[f"{name}.Arn"] = f"arn:aws:iam::{ACCOUNT}:role/{name}"
        elif kind == "AWS::IAM::ManagedPolicy":
            physical[name] = f"arn:aws:iam::{ACCOUNT}:policy/{name}"
        elif kind == "AWS::IAM::OIDCProvider":
            physical[name] = release_roles.FEDERATED.format(account=ACCOUNT)
        elif kind == "AWS::S3::Bucket":
            physical[name] = f"bootstrap-{name.lower()}"
            physical[f"{name}.Arn"] = f"arn:aws:s3:::bootstrap-{name.lower()}"
    resolver = Resolver(template, physical)
    resources = {
        name: resolver.resolve(r)
        for name, r in template["Resources"].items()
        if "Condition" not in r or resolver.condition(r["Condition"])
    }
    outputs = {name: resolver.resolve(o) for name, o in template["Outputs"].items()}
    return release_roles.Roles(resources, outputs, ACCOUNT)


def workflow_vars(roles: release_roles.Roles) -> dict:
    return dict(roles.variables, AWS_REGION=REGION)


@step("every workflow path under GitHub's job rules: push, pull request, train, by hand; each job's role trusts its token")
def workflow_paths() -> None:
    wrong = workflow_jobs.gha_expr.check_documented() + release_roles.iam_policy.check_documented()
    if wrong:
        raise Failed("the models of GitHub's expressions and IAM's evaluation disagree with the docs:\n" + "\n".join(wrong))
    roles = bootstrap_roles()
    try:
        for line in workflow_jobs.check(ROOT, workflow_vars(roles), roles.admits):
            print(f"rehearsal:   {line}")
    except (workflow_jobs.Broken, release_roles.Broken) as e:
        raise Failed(str(e)) from e


def deploy_jobs(roles: release_roles.Roles) -> dict[str, tuple[str, str]]:
    """environment -> (the role its deploy job assumes, the job's scripts), over every path."""
    jobs = {}
    for what, workflow, event, ref, inputs, fail, _ in workflow_jobs.PATHS:
        github = workflow_jobs.github_context(event, ref, workflow)
        run = workflow_jobs.simulate(ROOT, workflow, github, workflow_vars(roles), inputs, fail)
        for job in run.jobs.values():
            role = workflow_jobs.assumed_role(job)
            if job.environment in ("staging", "production") and role:
                jobs.setdefault(job.environment, (role, job.scripts))
    if set(jobs) != {"staging", "production"}:
        raise Failed(f"no path runs a staging and a production job that assume a role: {sorted(jobs)}")
    return jobs


@step("each deploy role, as IAM evaluates it: everything its job calls, nothing of the other environment")
def deploy_roles() -> None:
    roles = bootstrap_roles()
    template = yaml_parse(TEMPLATE.read_text())
    jobs = deploy_jobs(roles)
    try:
        for line in release_roles.check(jobs, INFRA, template, roles, REGION, ACCOUNT):
            print(f"rehearsal:   {line}")
    except release_roles.Broken as e:
        raise Failed(str(e)) from e


@step("a new release id is a new function version, for every parameter (release_versions.py)")
def every_parameter_versions(package: Path) -> None:
    sys.path.insert(0, str(INFRA))
    import release_id as ids

    def compute(parameters: dict) -> str:
        return ids.release_id(package, parameters, {}, "stack")

    if compute({"ModelKey": "m"}) != release_id(package, {"ModelKey": "m"}):
        raise Failed("infra/release-id.sh does not print what infra/release_id.py computes")
    problems = release_versions.check(compute, transformed, Resolver)
    if problems:
        raise Failed("release ids that are no change of the function, or the reverse:\n  " + "\n  ".join(problems))


@step("the execution role allows every handler permission of every resource (handler_permissions.py)")
def execution_role_permissions() -> None:
    missing, excused, evaluated = handler_permissions.check(transformed, Resolver, INFRA / "bootstrap.yaml")
    print(f"rehearsal: {evaluated} requests evaluated; excused, with the property that must stay absent:")
    for line in excused:
        print(f"rehearsal:   {line}")
    if missing:
        raise Failed("the CloudFormation execution role may not, or a role's boundary cuts off its own grant:\n  " + "\n  ".join(missing))


@step("the release path: canary with alarm rollback, alarms notify, IAM by default, staging first")
def release_path(package: Path) -> None:
    prod = transformed({"ReleaseId": release_id(package, {}), "TrafficShift": "Canary10Percent5Minutes"})
    res = prod["Resources"]
    groups = [r for r in res.values() if r["Type"] == "AWS::CodeDeploy::DeploymentGroup" and r.get("Condition") != "IsImage"]
    if len(groups) != 1:
        raise Failed(f"expected one CodeDeploy deployment group for the zip function, found {len(groups)}")
    group = groups[0]["Properties"]
    alarms = {a["Name"]["Ref"] for a in group["AlarmConfiguration"]["Alarms"]}
    for needed in ("ErrorsAlarm", "Http5xxAlarm", "DurationAlarm"):
        if needed not in alarms:
            raise Failed(f"a firing {needed} does not roll a deployment back (alarms: {sorted(alarms)})")
    if "DEPLOYMENT_STOP_ON_ALARM" not in group["AutoRollbackConfiguration"]["Events"]:
        raise Failed("deployments are not rolled back when an alarm fires")
    config = Resolver(prod, {}).resolve(group["DeploymentConfigName"])
    if config != "CodeDeployDefault.LambdaCanary10Percent5Minutes":
        raise Failed(f"production shifts traffic with {config}")
    for name, r in res.items():
        if r["Type"] == "AWS::CloudWatch::Alarm":
            if {"Ref": "AlarmTopic"} not in r["Properties"].get("AlarmActions", []):
                raise Failed(f"{name} notifies nobody")
    if res["AlarmTopic"].get("Condition"):
        raise Failed("the alarm topic exists only under a condition")
    if prod["_values"]["AuthMode"] != "AWS_IAM":
        raise Failed(f"the endpoint's default auth is {prod['_values']['AuthMode']}, not AWS_IAM")
    http = res["Http5xxAlarm"]["Properties"]
    if Resolver(prod, {}).resolve(http["MetricName"]) != "Url5xxCount":
        raise Failed("the 5xx alarm does not count the function URL's 5xx answers")

    staging = transformed({"ReleaseId": "x", "TrafficShift": "AllAtOnce"})
    group = next(
        r
        for r in staging["Resources"].values()
        if r["Type"] == "AWS::CodeDeploy::DeploymentGroup" and r.get("Condition") != "IsImage"
    )
    if Resolver(staging, {}).resolve(group["Properties"]["DeploymentConfigName"]) != "CodeDeployDefault.LambdaAllAtOnce":
        raise Failed("staging does not deploy all at once")

    # Which jobs of deploy.yml run, and in which order: the workflow_paths step.
    if "EXPECTED_SHA256=" not in (INFRA / "smoke-stack.sh").read_text():
        raise Failed("smoke-stack.sh does not check the served model's sha256")


def serve(infer: Path, uri: str, env: dict) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(infer), "serve", "--addr", f"127.0.0.1:{port}", "--model", uri],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return proc, port
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise Failed(f"infer serve did not listen within 120s: {proc.stdout.read() if proc.stdout else ''}")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.stdout.read() if proc.stdout else ""


def model_sha256(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/model", timeout=30) as reply:
        return json.load(reply)["sha256"]


@step("the stack's own resources under AWS's rules: alarm topic, concurrency, API Gateway logging, canary, bulk worker")
def own_rules(package: Path) -> None:
    shifts = yaml_parse(TEMPLATE.read_text())["Parameters"]["TrafficShift"]["AllowedValues"]
    try:
        stack_rules.check(transformed, lambda t: Resolver(t, {}), INFRA / "bootstrap.yaml", shifts)
    except stack_rules.Broken as e:
        raise Failed(str(e)) from e


@step("the function role's own policy, enforced by moto's IAM, lets infer load the model")
def role_loads_model(infer: Path) -> None:
    key = "models/resnet18-cifar10.onnx"
    template = transformed({"ModelKey": key, "ModelBucketName": "models", "ReleaseId": "x"})
    policy = role_policy(template, {}, "model")
    statements = policy["Statement"]
    sidecar = f"arn:aws:s3:::models/{key}.sha256"
    if not any(sidecar in (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]) for s in statements):
        # Still run it: the load below must then fail, which is what the message says.
        print(f"rehearsal: note: the policy does not name {sidecar}")
    without_sidecar = copy.deepcopy(policy)
    for s in without_sidecar["Statement"]:
        if isinstance(s["Resource"], list):
            s["Resource"] = [r for r in s["Resource"] if r != sidecar]
    data = MODEL.read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    moto = Moto()
    try:
        s3 = moto.client("s3")
        iam = moto.client("iam")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key=key, Body=data)
        s3.put_object(Bucket="models", Key=f"{key}.sha256", Body=f"{digest}  resnet18-cifar10.onnx\n".encode())
        creds = {}
        for user, doc in (("function", policy), ("no-sidecar", without_sidecar)):
            iam.create_user(UserName=user)
            iam.put_user_policy(UserName=user, PolicyName="model", PolicyDocument=json.dumps(doc))
            k = iam.create_access_key(UserName=user)["AccessKey"]
            creds[user] = (k["AccessKeyId"], k["SecretAccessKey"])
        admin = iam.create_user(UserName="admin")["User"]["UserName"]
        iam.put_user_policy(
            UserName=admin,
            PolicyName="all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        )
        k = iam.create_access_key(UserName=admin)["AccessKey"]
        admin_s3 = moto.client("s3", k["AccessKeyId"], k["SecretAccessKey"])
        moto.enforce_iam()

        # IAM is on: the role's credentials may not list other buckets' objects or write.
        denied = moto.client("s3", *creds["function"])
        try:
            denied.put_object(Bucket="models", Key="models/evil.onnx", Body=b"x")
            raise Failed("moto let the function role write: IAM is not enforced, this step proves nothing")
        except denied.exceptions.ClientError as e:
            if e.response["Error"]["Code"] != "AccessDenied":
                raise

        uri = f"s3://models/{key}"
        proc, port = serve(infer, uri, moto.env(*creds["function"]))
        if proc.poll() is not None:
            raise Failed(f"infer could not load {uri} with the function role's policy:\n{stop(proc)}")
        got = model_sha256(port)
        stop(proc)
        if got != digest:
            raise Failed(f"/v1/model reports sha256 {got}, the object is {digest}")

        # A model without a sidecar loads too (a 404, which ListBucket makes S3 answer).
        admin_s3.delete_object(Bucket="models", Key=f"{key}.sha256")
        proc, port = serve(infer, uri, moto.env(*creds["function"]))
        if proc.poll() is not None:
            raise Failed(f"infer could not load {uri} without a sidecar:\n{stop(proc)}")
        stop(proc)

        # The control: without the sidecar permission the load must fail.
        admin_s3.put_object(Bucket="models", Key=f"{key}.sha256", Body=f"{digest}  m\n".encode())
        proc, port = serve(infer, uri, moto.env(*creds["no-sidecar"]))
        log = stop(proc)
        if proc.returncode == 0 or "sha256" not in log:
            raise Failed(
                "infer started although its policy may not read the sidecar: this rehearsal would not "
                f"notice a role without that permission (exit {proc.returncode}):\n{log}"
            )
    finally:
        moto.close()


@step("the PreTraffic hook against infer in Lambda mode: Succeeded for the sidecar's model, Failed for another")
def pre_traffic_hook(infer: Path) -> None:
    moto = Moto()
    try:
        template = transformed({"ReleaseId": "x", "TrafficShift": "Canary10Percent5Minutes"})
        hook_run.run(template, TEMPLATE, infer, MODEL, moto.endpoint, ROOT)
    except hook_run.Broken as e:
        raise Failed(str(e)) from e
    finally:
        moto.close()


@step("smoke.sh passes against the model's sha256 and fails against another")
def smoke(infer: Path) -> None:
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    env = dict(os.environ)
    proc, port = serve(infer, str(MODEL), env)
    try:
        if proc.poll() is not None:
            raise Failed(f"infer serve stopped: {stop(proc)}")
        url = f"http://127.0.0.1:{port}/"
        run([str(INFRA / "smoke.sh"), url, "NONE"], dict(env, EXPECTED_SHA256=digest), "smoke.sh")
        wrong = subprocess.run(
            [str(INFRA / "smoke.sh"), url, "NONE"],
            env=dict(env, EXPECTED_SHA256="0" * 64),
            capture_output=True,
            text=True,
        )
        if wrong.returncode == 0:
            raise Failed("smoke.sh passed an endpoint serving another model than the one expected")
    finally:
        stop(proc)


@step("smoke.sh's signed path (AWS_IAM) through a function URL that checks SigV4 and the staging role's policy")
def signed_smoke(infer: Path) -> None:
    roles = bootstrap_roles()
    role, _ = deploy_jobs(roles)["staging"]
    policies = roles.policies(role)
    stack = release_roles.samconfig(INFRA)["staging"]["global"]["parameters"]["stack_name"]
    alias = release_roles.alias_arn(yaml_parse(TEMPLATE.read_text()), stack, REGION, ACCOUNT)
    # The control: the same policies with InvokeFunction denied must be refused.
    denied = policies + [{"Statement": [{"Effect": "Deny", "Action": "lambda:InvokeFunction", "Resource": "*"}]}]
    secret, token = "rehearsal-secret", "rehearsal-session-token"
    digest = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    env = dict(os.environ)
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_DEFAULT_REGION"):
        env.pop(name, None)
    env.update(AWS_REGION=REGION, EXPECTED_SHA256=digest, MIN_CORRECT="14")
    proc, port = serve(infer, str(MODEL), dict(os.environ))
    url = function_url.FunctionUrl(
        f"http://127.0.0.1:{port}",
        REGION,
        alias,
        {"AKIAROLE": (secret, token, policies), "AKIADENIED": (secret, token, denied)},
    )

    def smoke_as(key: str, key_secret: str, auth: str = "AWS_IAM") -> subprocess.CompletedProcess:
        creds = dict(env, AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=key_secret, AWS_SESSION_TOKEN=token)
        return subprocess.run([str(INFRA / "smoke.sh"), url.url, auth], env=creds, capture_output=True, text=True)

    try:
        if proc.poll() is not None:
            raise Failed(f"infer serve stopped: {stop(proc)}")
        ok = smoke_as("AKIAROLE", secret)
        if ok.returncode != 0:
            raise Failed(
                f"smoke.sh AWS_IAM with {role}'s policy was refused: {function_url.describe(url.refusals)}\n{ok.stderr[-1000:]}"
            )
        if url.forwarded < 21:
            raise Failed(f"only {url.forwarded} signed requests reached infer; smoke.sh sends 21")
        for key, key_secret, auth, why in (
            ("AKIAROLE", "wrong-secret", "AWS_IAM", "signature does not match"),
            ("AKIADENIED", secret, "AWS_IAM", "lambda:InvokeFunction"),
            ("AKIAROLE", secret, "NONE", "no SigV4 Authorization header"),
        ):
            url.refusals.clear()
            bad = smoke_as(key, key_secret, auth)
            if bad.returncode == 0 or not any(why in r for r in url.refusals):
                raise Failed(
                    f"smoke.sh {auth} as {key} (secret {key_secret}) was not refused for {why!r} "
                    f"(exit {bad.returncode}, refusals {function_url.describe(url.refusals)}): this check would not notice"
                )
    finally:
        url.close()
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--infer", type=Path, required=True, help="an x86-64 infer binary")
    parser.add_argument("--package", type=Path, required=True, help="the Lambda zip that ships")
    steps = {
        "sam_commands": lambda: sam_commands(args.package),
        "versions": lambda: versions(args.package),
        "every_parameter_versions": lambda: every_parameter_versions(args.package),
        "execution_role_permissions": execution_role_permissions,
        "release_path": lambda: release_path(args.package),
        "workflow_paths": workflow_paths,
        "deploy_roles": deploy_roles,
        "role_loads_model": lambda: role_loads_model(args.infer),
        "smoke": lambda: smoke(args.infer),
        "signed_smoke": lambda: signed_smoke(args.infer),
        "own_rules": lambda: own_rules(args.package),
        "pre_traffic_hook": lambda: pre_traffic_hook(args.infer),
    }
    parser.add_argument("--only", nargs="+", choices=list(steps), help="run just these steps")
    args = parser.parse_args()
    if not args.package.is_file():
        print(f"rehearsal: no package at {args.package}: run `cargo xtask package` first", file=sys.stderr)
        return 2
    try:
        for name, run_step in steps.items():
            if not args.only or name in args.only:
                run_step()
    except Failed as e:
        print(f"rehearsal: FAILED: {e}", file=sys.stderr)
        return 1
    print("rehearsal: every step passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
