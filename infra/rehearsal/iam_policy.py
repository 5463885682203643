"""IAM's decision for one request against a set of policies, as AWS documents it ("Policy
evaluation logic", "IAM JSON policy elements"): an explicit Deny wins, then any Allow, else the
request is implicitly denied. Actions match case-insensitively, resources case-sensitively, both
with `*` and `?`; NotAction, NotResource and Principal are read; conditions are evaluated for the
operators below, with the documented rule for a key missing from the request (false, except for
the negated operators and `...IfExists`, which are true). An operator it does not know is an
error, never a silent match. Python: the rehearsal runs in the SAM CLI's environment (botocore).

moto has an evaluator too (`moto.iam.access_control`), but it compares actions case-sensitively,
ignores every operator but StringEquals and treats a failed condition as a Deny; IAM does not.
"""

from __future__ import annotations

import re

ALLOW, EXPLICIT_DENY, IMPLICIT_DENY = "Allow", "ExplicitDeny", "ImplicitDeny"


class PolicyError(ValueError):
    """A policy this evaluator cannot decide (an unknown operator, a policy variable)."""


def _glob(pattern: str, value: str, ignore_case: bool) -> bool:
    if "${" in pattern:
        raise PolicyError(f"policy variables are not evaluated: {pattern!r}")
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.S | (re.I if ignore_case else 0)) is not None


def _listed(x) -> list:
    return x if isinstance(x, list) else [x]


def _principal_matches(element, principal: dict[str, str] | None) -> bool:
    if principal is None:
        raise PolicyError("a statement with a Principal needs the request's principal")
    if element == "*":
        return True
    for kind, values in element.items():
        if kind in principal and any(v == "*" or v == principal[kind] for v in _listed(values)):
            return True
    return False


def _bool(v: str) -> bool:
    return str(v).lower() == "true"


_OPERATORS = {
    "StringEquals": (lambda want, got: want == got, False),
    "StringNotEquals": (lambda want, got: want == got, True),
    "StringEqualsIgnoreCase": (lambda want, got: want.lower() == got.lower(), False),
    "StringNotEqualsIgnoreCase": (lambda want, got: want.lower() == got.lower(), True),
    "StringLike": (lambda want, got: _glob(want, got, False), False),
    "StringNotLike": (lambda want, got: _glob(want, got, False), True),
    "ArnEquals": (lambda want, got: want == got, False),
    "ArnNotEquals": (lambda want, got: want == got, True),
    "ArnLike": (lambda want, got: _glob(want, got, False), False),
    "ArnNotLike": (lambda want, got: _glob(want, got, False), True),
    "Bool": (lambda want, got: _bool(want) == _bool(got), False),
}


def _condition_holds(operator: str, block: dict, context: dict) -> bool:
    lowered = {k.lower(): v for k, v in context.items()}
    set_op = None
    if ":" in operator:
        set_op, operator = operator.split(":", 1)
        if set_op not in ("ForAnyValue", "ForAllValues"):
            raise PolicyError(f"unknown condition set operator {set_op}")
    if_exists = operator.endswith("IfExists")
    base = operator.removesuffix("IfExists")
    for key, wanted in block.items():
        present = key.lower() in lowered
        if base == "Null":
            if _bool(_listed(wanted)[0]) == present:
                return False
            continue
        if base not in _OPERATORS:
            raise PolicyError(f"condition operator {operator} is not evaluated")
        match, negated = _OPERATORS[base]
        if not present:
            if if_exists or negated or set_op == "ForAllValues":
                continue
            return False
        got = [str(v) for v in _listed(lowered[key.lower()])]
        wanted = [str(w).lower() if isinstance(w, bool) else str(w) for w in _listed(wanted)]
        hits = [any(match(w, g) for w in wanted) for g in got]
        if set_op == "ForAllValues":
            ok = all(hits) if not negated else not any(hits)
        elif set_op == "ForAnyValue" or len(got) == 1:
            ok = any(hits) if not negated else not any(hits)
        else:
            raise PolicyError(f"{key} has several values: {operator} needs ForAnyValue or ForAllValues")
        if not ok:
            return False
    return True


def statement_applies(statement: dict, action: str, resource: str | None, context: dict, principal) -> bool:
    if "Action" in statement:
        if not any(_glob(a, action, True) for a in _listed(statement["Action"])):
            return False
    elif "NotAction" in statement:
        if any(_glob(a, action, True) for a in _listed(statement["NotAction"])):
            return False
    else:
        raise PolicyError(f"statement without Action or NotAction: {statement}")
    if "Resource" in statement:
        if resource is None or not any(_glob(r, resource, False) for r in _listed(statement["Resource"])):
            return False
    elif "NotResource" in statement:
        if resource is None or any(_glob(r, resource, False) for r in _listed(statement["NotResource"])):
            return False
    if "Principal" in statement and not _principal_matches(statement["Principal"], principal):
        return False
    if "NotPrincipal" in statement and _principal_matches(statement["NotPrincipal"], principal):
        return False
    return all(_condition_holds(op, block, context) for op, block in statement.get("Condition", {}).items())


def decide(
    policies: list[dict],
    action: str,
    resource: str | None,
    context: dict | None = None,
    principal: dict[str, str] | None = None,
) -> str:
    """ALLOW, EXPLICIT_DENY or IMPLICIT_DENY for `action` on `resource` (None for a trust policy,
    whose statements name no resource), with the request's condition keys in `context`."""
    context = context or {}
    allowed = False
    for policy in policies:
        for statement in _listed(policy["Statement"]):
            if statement_applies(statement, action, resource, context, principal):
                if statement["Effect"] == "Deny":
                    return EXPLICIT_DENY
                allowed = True
    return ALLOW if allowed else IMPLICIT_DENY


# Rules from AWS's "Policy evaluation logic" and "IAM JSON policy elements" pages, as cases:
# a check that this model still decides as documented.
_ARN = "arn:aws:lambda:us-east-1:123456789012:function:f:live"
DOCUMENTED = [
    # Action names are case-insensitive; wildcards match within and across segments.
    ([{"Statement": [{"Effect": "Allow", "Action": "LAMBDA:invokefunction", "Resource": _ARN}]}], "lambda:InvokeFunction", _ARN, {}, ALLOW),
    ([{"Statement": [{"Effect": "Allow", "Action": "lambda:Invoke*", "Resource": "arn:aws:lambda:*:*:function:f*"}]}], "lambda:InvokeFunctionUrl", _ARN, {}, ALLOW),
    # Resources are case-sensitive.
    ([{"Statement": [{"Effect": "Allow", "Action": "lambda:*", "Resource": _ARN.upper()}]}], "lambda:InvokeFunction", _ARN, {}, IMPLICIT_DENY),
    # An explicit Deny overrides any Allow.
    (
        [{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}, {"Effect": "Deny", "Action": "lambda:InvokeFunction", "Resource": "*"}]}],
        "lambda:InvokeFunction", _ARN, {}, EXPLICIT_DENY,
    ),
    # A condition key missing from the request: false, but true for a negated operator.
    ([{"Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*", "Condition": {"StringEquals": {"iam:PassedToService": "x"}}}]}], "iam:PassRole", "r", {}, IMPLICIT_DENY),
    ([{"Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*", "Condition": {"StringNotEquals": {"iam:PassedToService": "x"}}}]}], "iam:PassRole", "r", {}, ALLOW),
    # Condition key names are case-insensitive; several values of one key are ORed.
    ([{"Statement": [{"Effect": "Allow", "Action": "s:A", "Resource": "*", "Condition": {"StringEquals": {"K:Sub": ["a", "b"]}}}]}], "s:A", "r", {"k:sub": "b"}, ALLOW),
    # NotAction: the statement covers every other action.
    ([{"Statement": [{"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}]}], "iam:PassRole", "r", {}, IMPLICIT_DENY),
]


def check_documented() -> list[str]:
    wrong = []
    for policies, action, resource, context, want in DOCUMENTED:
        got = decide(policies, action, resource, context)
        if got != want:
            wrong.append(f"{action} on {resource} with {context}: {got}, IAM documents {want}")
    return wrong
