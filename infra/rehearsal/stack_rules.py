"""The stack's own resources held to AWS's documented rules (a rehearsal step; rehearse.py runs it).

Python because it reads the SAM translator's output and runs boto3 code, both Python's. Each
rule comes from the platform, not from our template; the source is named beside each:

- Alarm topic: CloudWatch publishes an alarm to an SSE topic only when the key policy admits
  cloudwatch.amazonaws.com for kms:Decrypt and kms:GenerateDataKey*; the AWS-managed
  alias/aws/sns key's policy cannot be edited and admits no service, so every notification is
  dropped (https://repost.aws/knowledge-center/cloudwatch-configure-alarm-sns, and the SNS
  guide's https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html, "Enable
  compatibility between event sources from AWS services and encrypted topics"). The topic's
  access policy must also allow sns:Publish to each publishing service.
- Concurrency: "You can reserve up to the Unreserved account concurrency value that is shown,
  minus 100 for functions that don't have reserved concurrency"
  (https://docs.aws.amazon.com/lambda/latest/dg/configuration-concurrency.html), and "New AWS
  accounts have reduced concurrency and memory quotas" (limits.html): 10 in practice.
- API Gateway logging: a stage with access logs or execution logging needs the account's
  CloudWatch role (AWS::ApiGateway::Account), a role API Gateway may assume with the
  AmazonAPIGatewayPushToCloudWatchLogs permissions
  (https://docs.aws.amazon.com/apigateway/latest/developerguide/set-up-logging.html).
- Canary alarms: CloudWatch aggregates a metric into periods aligned to the clock, and an alarm
  decides after EvaluationPeriods of them; CodeDeploy watches the alarms only while it shifts
  traffic. The hook: SAM gives the deployment group AWSCodeDeployRoleForLambda, which may invoke
  only functions named CodeDeployHook_*; the hook must answer with
  PutLifecycleEventHookExecutionStatus.
- Bulk worker: the Map's invoke target is no alias or function that a deployment group shifts.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Callable

from samtranslator.yaml_helper import yaml_parse

MIN_UNRESERVED = 100  # Lambda's documented floor of unreserved concurrency per account
ACCOUNT_QUOTAS = (10, 1000)  # a new account's quota, and the default one
PUSH_TO_CLOUDWATCH_LOGS = "AmazonAPIGatewayPushToCloudWatchLogs"
# The actions of that managed policy, for a role that states them inline instead.
PUSH_TO_CLOUDWATCH_LOGS_ACTIONS = (
    "logs:CreateLogGroup",
    "logs:CreateLogStream",
    "logs:DescribeLogGroups",
    "logs:DescribeLogStreams",
    "logs:PutLogEvents",
    "logs:GetLogEvents",
    "logs:FilterLogEvents",
)
# What AWSCodeDeployRoleForLambda lets CodeDeploy invoke as a lifecycle hook.
HOOK_NAME_PREFIX = "CodeDeployHook_"


class Broken(Exception):
    """A resource of the stack breaks a rule of the platform."""


def as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def exists(template: dict, resolver, name: str) -> bool:
    condition = template["Resources"][name].get("Condition")
    return condition is None or resolver.condition(condition)


def allows(statement: dict, action: str) -> bool:
    """Whether the statement's Action names `action`, wildcards matched as IAM matches them."""
    return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in as_list(statement.get("Action")))


def services(statement: dict) -> set[str]:
    principal = statement.get("Principal", {})
    if principal == "*":
        return {"*"}
    return set(as_list(principal.get("Service"))) if isinstance(principal, dict) else set()


def logical_ids(node) -> set[str]:
    """The resources an (unresolved) expression refers to."""
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= logical_ids(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".", 1)[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= {m.split(".", 1)[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
                if not isinstance(value, str):
                    found |= logical_ids(value[1])
            else:
                found |= logical_ids(value)
    return found


# --- 5: every publisher of the alarm topic is admitted by the topic's key and policy -------------


def alarm_topic(template: dict, resolver) -> None:
    res = template["Resources"]
    publishers: dict[str, dict[str, set[str]]] = {}
    for name, r in res.items():
        if not exists(template, resolver, name):
            continue
        props = r.get("Properties", {})
        targets: list[tuple[str, object]] = []
        if r["Type"] == "AWS::CloudWatch::Alarm":
            for key in ("AlarmActions", "OKActions", "InsufficientDataActions"):
                targets += [("cloudwatch.amazonaws.com", a) for a in as_list(props.get(key))]
        elif r["Type"] == "AWS::CodeDeploy::DeploymentGroup":
            targets += [("codedeploy.amazonaws.com", t.get("TriggerTargetArn")) for t in as_list(props.get("TriggerConfigurations"))]
        elif r["Type"] == "AWS::Events::Rule":
            targets += [("events.amazonaws.com", t.get("Arn")) for t in as_list(props.get("Targets"))]
        for service, target in targets:
            for topic in logical_ids(target):
                if res.get(topic, {}).get("Type") == "AWS::SNS::Topic":
                    publishers.setdefault(topic, {}).setdefault(service, set()).add(name)
    if not publishers:
        raise Broken("no alarm publishes to a topic of the stack: nobody hears of any alarm")

    for topic, by_service in publishers.items():
        key = res[topic].get("Properties", {}).get("KmsMasterKeyId")
        if key is not None:
            key_ids = [k for k in logical_ids(key) if res.get(k, {}).get("Type") == "AWS::KMS::Key"]
            if key_ids:
                policy = resolver.resolve(res[key_ids[0]]["Properties"]["KeyPolicy"])
                admitted = {
                    s
                    for st in as_list(policy.get("Statement"))
                    if st.get("Effect") == "Allow" and allows(st, "kms:Decrypt") and allows(st, "kms:GenerateDataKey")
                    for s in services(st)
                }
                why = f"the key policy of {key_ids[0]} admits only {sorted(admitted) or 'no service'}"
            else:
                text = str(resolver.resolve(key))
                if text.startswith("alias/aws/") or ":alias/aws/" in text:
                    admitted, why = set(), f"{text} is an AWS-managed key, whose policy admits no service principal"
                else:
                    raise Broken(f"{topic} is encrypted with {text}, whose key policy this stack does not hold: name a key of the stack")
            for service, alarms in by_service.items():
                if service not in admitted and "*" not in admitted:
                    raise Broken(
                        f"{topic} is encrypted and {why}: {service} cannot publish "
                        f"{', '.join(sorted(alarms))} (the notifications are dropped; "
                        "https://repost.aws/knowledge-center/cloudwatch-configure-alarm-sns)"
                    )
        policies = [
            resolver.resolve(r["Properties"]["PolicyDocument"])
            for n, r in res.items()
            if r["Type"] == "AWS::SNS::TopicPolicy" and {"Ref": topic} in as_list(r["Properties"].get("Topics")) and exists(template, resolver, n)
        ]
        for service, alarms in by_service.items():
            if not any(
                st.get("Effect") == "Allow" and service in services(st) and allows(st, "sns:Publish")
                for p in policies
                for st in as_list(p.get("Statement"))
            ):
                raise Broken(f"the access policy of {topic} does not let {service} publish ({', '.join(sorted(alarms))})")


# --- 6: the default stacks fit an account's concurrency -----------------------------------------


def reserved(template: dict, resolver) -> dict[str, int]:
    out = {}
    for name, r in template["Resources"].items():
        if r["Type"] != "AWS::Lambda::Function" or not exists(template, resolver, name):
            continue
        value = resolver.resolve(r["Properties"].get("ReservedConcurrentExecutions", resolver.NO_VALUE))
        if value is not resolver.NO_VALUE:
            out[name] = int(value)
    return out


def concurrency(stacks: dict[str, tuple[dict, object]]) -> None:
    """`stacks`: every stack one account holds, as deployed with default parameters."""
    functions = sum(
        1 for t, resolver in stacks.values() for n, r in t["Resources"].items() if r["Type"] == "AWS::Lambda::Function" and exists(t, resolver, n)
    )
    if not functions:
        raise Broken("the stacks hold no Lambda function: this check would prove nothing")
    reservations = {f"{stack}/{fn}": n for stack, (t, resolver) in stacks.items() for fn, n in reserved(t, resolver).items()}
    for name, n in reservations.items():
        if n < 0:
            raise Broken(f"{name} reserves {n} executions; Lambda accepts 0 or more")
    total = sum(reservations.values())
    for quota in ACCOUNT_QUOTAS:
        room = max(quota - MIN_UNRESERVED, 0)
        if total > room:
            raise Broken(
                f"with an account concurrency quota of {quota}, the default stacks reserve {total} "
                f"({', '.join(f'{k}={v}' for k, v in sorted(reservations.items()))}), but Lambda keeps "
                f"{MIN_UNRESERVED} unreserved, so at most {room} may be reserved: the first deploy fails"
            )


# --- 7: a stage that logs has the account's CloudWatch role -------------------------------------


def api_gateway_logging(apikey: dict, resolver, bootstrap: Path) -> None:
    stages = []
    for name, r in apikey["Resources"].items():
        if r["Type"] != "AWS::ApiGateway::Stage" or not exists(apikey, resolver, name):
            continue
        props = r["Properties"]
        methods = as_list(props.get("MethodSettings"))
        if props.get("AccessLogSetting") or any(m.get("LoggingLevel") in ("INFO", "ERROR") or m.get("DataTraceEnabled") for m in methods):
            stages.append(name)
    if not stages:
        raise Broken("API_KEY mode has no stage with access logs: nothing records who called with which key")

    doc = yaml_parse(bootstrap.read_text())
    res = doc["Resources"]
    accounts = [r for r in res.values() if r["Type"] == "AWS::ApiGateway::Account"]
    if not accounts:
        raise Broken(
            f"{', '.join(stages)} write CloudWatch logs, which API Gateway refuses until the account has a "
            f"CloudWatch role, and {bootstrap.name} sets none (no AWS::ApiGateway::Account): "
            "API_KEY mode fails in a fresh region"
        )
    role_ids = logical_ids(accounts[0].get("Properties", {}).get("CloudWatchRoleArn"))
    roles = [res[i] for i in role_ids if res.get(i, {}).get("Type") == "AWS::IAM::Role"]
    if not roles:
        raise Broken(f"the AWS::ApiGateway::Account of {bootstrap.name} names no role of that stack")
    role = roles[0]["Properties"]
    if not any(
        st.get("Effect") == "Allow" and "apigateway.amazonaws.com" in services(st) and allows(st, "sts:AssumeRole")
        for st in as_list(role["AssumeRolePolicyDocument"].get("Statement"))
    ):
        raise Broken("API Gateway may not assume the account's CloudWatch role")
    managed = any(PUSH_TO_CLOUDWATCH_LOGS in json.dumps(arn) for arn in as_list(role.get("ManagedPolicyArns")))
    inline = [st for p in as_list(role.get("Policies")) for st in as_list(p["PolicyDocument"].get("Statement")) if st.get("Effect") == "Allow"]
    missing = [a for a in PUSH_TO_CLOUDWATCH_LOGS_ACTIONS if not any(allows(st, a) for st in inline)]
    if not managed and missing:
        raise Broken(f"the account's CloudWatch role may not {', '.join(missing)} ({PUSH_TO_CLOUDWATCH_LOGS})")


# --- risks: the canary's alarms can fire in time, the hook can run -------------------------------


def shift_window(config: str) -> int | None:
    """Seconds before a CodeDeploy Lambda config sends all traffic to the new version."""
    if m := re.fullmatch(r"CodeDeployDefault\.LambdaCanary(\d+)Percent(\d+)Minutes", config):
        return int(m[2]) * 60
    if m := re.fullmatch(r"CodeDeployDefault\.LambdaLinear(\d+)PercentEvery(\d+)Minutes?", config):
        steps = 100 // int(m[1])
        return (steps - 1) * int(m[2]) * 60
    return None


def alarm_seconds(props: dict) -> tuple[int, str]:
    """Worst case from a canary's first bad request to the alarm: the evaluation window plus one
    period, because the period that request falls into ends up to one period later."""
    periods = [props["Period"]] if "Period" in props else [m["MetricStat"]["Period"] for m in props.get("Metrics", []) if "MetricStat" in m]
    period = max(int(p) for p in periods)
    n = int(props["EvaluationPeriods"])
    m = int(props.get("DatapointsToAlarm", n))
    if m > n:
        raise Broken(f"DatapointsToAlarm {m} exceeds EvaluationPeriods {n}")
    return period * n + period, f"{period} s x {n} periods (+1 for alignment)"


def deployment_groups(template: dict, resolver) -> list[str]:
    groups = [n for n, r in template["Resources"].items() if r["Type"] == "AWS::CodeDeploy::DeploymentGroup" and exists(template, resolver, n)]
    if not groups:
        raise Broken("no deployment group shifts traffic: nothing can stop a bad version")
    return groups


def canary_alarms(template: dict, resolver, traffic_shifts: list[str]) -> None:
    res = template["Resources"]
    windows = {}
    for shift in traffic_shifts:
        window = shift_window(f"CodeDeployDefault.Lambda{shift}")
        if window is not None:
            windows[shift] = window
    for group in deployment_groups(template, resolver):
        for alarm in res[group]["Properties"]["AlarmConfiguration"]["Alarms"]:
            (name,) = logical_ids(alarm["Name"])
            seconds, how = alarm_seconds(res[name]["Properties"])
            for shift, window in windows.items():
                if seconds > window:
                    raise Broken(
                        f"{name} needs up to {seconds} s ({how}) to fire, but {shift} moves all traffic after "
                        f"{window} s: it cannot stop the canary"
                    )


def pre_traffic_hook(template: dict, resolver) -> None:
    res = template["Resources"]
    for group in deployment_groups(template, resolver):
        props = res[group]["Properties"]
        aliases = [
            n
            for n, r in res.items()
            if r["Type"] == "AWS::Lambda::Alias"
            and logical_ids(r.get("UpdatePolicy", {}).get("CodeDeployLambdaAliasUpdate", {}).get("DeploymentGroupName")) == {group}
        ]
        for alias in aliases:
            update = res[alias]["UpdatePolicy"]["CodeDeployLambdaAliasUpdate"]
            if "BeforeAllowTrafficHook" not in update:
                raise Broken(f"{alias} takes traffic with no PreTraffic hook: nothing tests the new version before it does")
            (hook,) = logical_ids(update["BeforeAllowTrafficHook"])
            hook_props = res[hook]["Properties"]
            name = str(resolver.resolve(hook_props["FunctionName"]))
            if not name.startswith(HOOK_NAME_PREFIX) and logical_ids(props["ServiceRoleArn"]) == {"CodeDeployServiceRole"}:
                raise Broken(f"the hook {name} is not named {HOOK_NAME_PREFIX}*: AWSCodeDeployRoleForLambda may not invoke it")
            version = logical_ids(res[alias]["Properties"]["FunctionVersion"])
            env = hook_props.get("Environment", {}).get("Variables", {})
            if not version & logical_ids(env.get("NEW_VERSION")):
                raise Broken(f"the hook's NEW_VERSION is not the version {sorted(version)} that {alias} moves to")
            (role,) = logical_ids(hook_props["Role"])
            statements = [st for p in resolver.resolve(res[role]["Properties"]["Policies"]) for st in as_list(p["PolicyDocument"]["Statement"])]
            for action in ("codedeploy:PutLifecycleEventHookExecutionStatus", "lambda:InvokeFunction"):
                if not any(st["Effect"] == "Allow" and allows(st, action) for st in statements):
                    raise Broken(f"the hook's role {role} may not {action}")


# --- risks: the Map's worker is not what CodeDeploy shifts and watches ---------------------------


def definition_targets(machine: dict) -> list:
    """The FunctionName of every lambda:invoke task, with `${X}` substitutions put back."""
    props = machine["Properties"]
    text = props.get("DefinitionString")
    if isinstance(text, dict) and "Fn::Join" in text:
        text = text["Fn::Join"][0].join(x if isinstance(x, str) else json.dumps(x) for x in text["Fn::Join"][1])
    definition = json.loads(text) if isinstance(text, str) else props.get("Definition")
    subs = props.get("DefinitionSubstitutions", {})
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("Type") == "Task" and ":lambda:" in str(node.get("Resource")):
                target = node.get("Parameters", {}).get("FunctionName", node.get("Resource"))
                m = re.fullmatch(r"\$\{(\w+)\}", str(target))
                found.append(subs[m[1]] if m else target)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(definition)
    return found


def bulk_worker(template: dict, resolver) -> None:
    res = template["Resources"]
    shifted: dict[str, str] = {}  # logical ids of the aliases CodeDeploy moves and of their functions
    watched_names = set()
    for n, r in res.items():
        if r["Type"] == "AWS::Lambda::Alias" and "CodeDeployLambdaAliasUpdate" in r.get("UpdatePolicy", {}):
            shifted[n] = n
            for fn in logical_ids(r["Properties"]["FunctionName"]):
                shifted[fn] = n
        if r["Type"] == "AWS::CodeDeploy::DeploymentGroup":
            for alarm in r["Properties"]["AlarmConfiguration"]["Alarms"]:
                for a in logical_ids(alarm["Name"]):
                    for d in as_list(res[a]["Properties"].get("Dimensions")):
                        if d.get("Name") == "FunctionName":
                            watched_names.add(str(resolver.resolve(d["Value"])))
    machines = [n for n, r in res.items() if r["Type"] == "AWS::StepFunctions::StateMachine" and exists(template, resolver, n)]
    targets = [(m, t) for m in machines for t in definition_targets(res[m])]
    if not targets:
        raise Broken("no state machine invokes a Lambda function: this check would prove nothing")
    for machine, target in targets:
        chosen = resolver.resolve(target)
        for logical in logical_ids(target):
            if logical in shifted and (chosen == resolver.values.get(logical) or chosen == resolver.values.get(f"{logical}.Arn")):
                raise Broken(
                    f"{machine} invokes {logical}, which CodeDeploy shifts with {shifted[logical]}: bulk batches "
                    "share the HTTP function's concurrency and count in the metrics of its rollback alarms"
                )
        for logical in logical_ids(target):
            r = res.get(logical, {})
            if r.get("Type") == "AWS::Lambda::Function" and str(resolver.resolve(r["Properties"].get("FunctionName"))) in watched_names:
                raise Broken(f"{machine}'s worker {logical} is the function whose metrics the rollback alarms watch")


def check(transformed: Callable[[dict], dict], resolver: Callable[[dict], object], bootstrap: Path, traffic_shifts: list[str]) -> None:
    """Every rule above on the template as deploy.sh deploys it; raises Broken naming each
    rule that fails (all of them run, so one fix does not hide the next failure)."""
    shared = {"ModelBucketName": "models", "ModelKey": "models/m.onnx", "ReleaseId": "x"}
    staging = transformed(dict(shared, TrafficShift="AllAtOnce"))
    production = transformed(dict(shared, TrafficShift="Canary10Percent5Minutes"))
    apikey = transformed(dict(shared, TrafficShift="Canary10Percent5Minutes", AuthMode="API_KEY"))
    image = transformed(dict(shared, TrafficShift="Canary10Percent5Minutes", PackageType="Image", ImageUri="123456789012.dkr.ecr.us-east-1.amazonaws.com/infer:1"))
    rs, rp, ra, ri = resolver(staging), resolver(production), resolver(apikey), resolver(image)
    rules = {
        "alarm topic": lambda: alarm_topic(production, rp),
        "concurrency": lambda: concurrency({"staging": (staging, rs), "production": (production, rp)}),
        "API Gateway logging role": lambda: api_gateway_logging(apikey, ra, bootstrap),
        "canary alarms": lambda: canary_alarms(production, rp, traffic_shifts),
        "pre-traffic hook": lambda: pre_traffic_hook(production, rp),
        "pre-traffic hook (image)": lambda: pre_traffic_hook(image, ri),
        "bulk worker": lambda: bulk_worker(production, rp),
        "bulk worker (image)": lambda: bulk_worker(image, ri),
    }
    failed = []
    for name, rule in rules.items():
        try:
            rule()
            print(f"rehearsal: {name}: holds")
        except Broken as e:
            failed.append(f"{name}: {e}")
    if failed:
        raise Broken("\n".join(failed))
