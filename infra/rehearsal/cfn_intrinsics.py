"""CloudFormation's intrinsic functions (Ref, GetAtt, Sub, Join, If and the conditions) for the
parameter values of one deployment: the one resolver of the release id (release_id.py) and the
rehearsal's checks. Python because both read the SAM translator's output in its environment.
"""

from __future__ import annotations


class Unresolved(Exception):
    """A reference this deployment's values cannot resolve."""


class Resolver:
    """Resolves a template's intrinsics. Resources that `values` does not name resolve to names of
    their own (`<Name>`), so that a value depends on the parameters alone."""

    NO_VALUE = object()

    def __init__(
        self,
        template: dict,
        values: dict[str, str],
        stack: str,
        region: str = "region",
        account: str = "account",
    ):
        self.template = template
        self.values = dict(values)
        self.values.update(
            {
                "AWS::Partition": "aws",
                "AWS::Region": region,
                "AWS::AccountId": account,
                "AWS::StackName": stack,
                "AWS::URLSuffix": "amazonaws.com",
            }
        )

    def fail(self, what: str) -> Exception:
        return Unresolved(what)

    def condition(self, name: str) -> bool:
        return self.truth(self.template["Conditions"][name])

    def truth(self, expr) -> bool:
        ((fn, arg),) = expr.items()
        if fn == "Fn::Equals":
            a, b = (self.resolve(x) for x in arg)
            return str(a) == str(b)
        if fn == "Fn::Not":
            return not self.truth(arg[0])
        if fn == "Fn::And":
            return all(self.truth(x) for x in arg)
        if fn == "Fn::Or":
            return any(self.truth(x) for x in arg)
        if fn == "Condition":
            return self.condition(arg)
        raise self.fail(f"condition function {fn}")

    def lookup(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        base = name.split(".", 1)[0]
        if base in self.template["Resources"]:
            return f"<{name}>"
        raise self.fail(f"cannot resolve Ref {name}")

    def resolve(self, node):
        if isinstance(node, list):
            return [x for x in (self.resolve(x) for x in node) if x is not self.NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((fn, arg),) = node.items()
            if fn == "Ref":
                return self.NO_VALUE if arg == "AWS::NoValue" else self.lookup(arg)
            if fn == "Fn::GetAtt":
                return self.lookup(".".join(arg) if isinstance(arg, list) else arg)
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.condition(cond) else no)
            if fn == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if fn == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else arg
                local = {k: self.resolve(v) for k, v in extra.items()}
                out, rest = "", text
                while "${" in rest:
                    head, _, tail = rest.partition("${")
                    name, _, rest = tail.partition("}")
                    out += head + str(local[name] if name in local else self.lookup(name))
                return out + rest
        out = {k: self.resolve(v) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not self.NO_VALUE}
