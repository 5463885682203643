"""GitHub Actions' expression language, as its documentation defines it ("Evaluate expressions in
workflows and actions"): literals, contexts, `!`, comparisons, `&&`/`||`, the functions, and its
rules for falsy values, loose equality (mismatched types are coerced to numbers, strings compare
ignoring case) and `&&`/`||` returning an operand. Python because the rehearsal that uses it
(`workflow_jobs.py`) runs in the SAM CLI's virtual environment beside moto and botocore.

Status functions (`success()`, ...) are supplied by the caller, which knows the job graph.
"""

from __future__ import annotations

import json
import math
import re

STATUS_FUNCTIONS = ("success", "always", "cancelled", "failure")


class ExpressionError(ValueError):
    """An expression this evaluator cannot read (or GitHub would refuse)."""


class _Filtered(list):
    """The result of an object filter (`needs.*`): a property of it is taken of each element."""


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?(?:0x[0-9a-fA-F]+|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?))"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[()\[\].,!<>*])|(?P<id>[A-Za-z_][A-Za-z0-9_-]*))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"cannot read {text[pos:]!r} in {text!r}")
        kind = m.lastgroup
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Precedence from the documentation: ( ) [ ] . ! < <= > >= == != && ||."""

    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self, value=None):
        tok = self.peek()
        if tok[0] is None or (value is not None and tok[1] != value):
            raise ExpressionError(f"expected {value or 'more'} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self):
        node = self.or_()
        if self.i != len(self.toks):
            raise ExpressionError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        return node

    def or_(self):
        node = self.and_()
        while self.peek() == ("op", "||"):
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self):
        node = self.eq()
        while self.peek() == ("op", "&&"):
            self.take()
            node = ("and", node, self.eq())
        return node

    def eq(self):
        node = self.cmp()
        while self.peek() in (("op", "=="), ("op", "!=")):
            op = self.take()[1]
            node = ("cmp", op, node, self.cmp())
        return node

    def cmp(self):
        node = self.unary()
        while self.peek() in (("op", "<"), ("op", "<="), ("op", ">"), ("op", ">=")):
            op = self.take()[1]
            node = ("cmp", op, node, self.unary())
        return node

    def unary(self):
        if self.peek() == ("op", "!"):
            self.take()
            return ("not", self.unary())
        return self.postfix()

    def postfix(self):
        node = self.primary()
        while True:
            tok = self.peek()
            if tok == ("op", "."):
                self.take()
                kind, name = self.take()
                if kind == "id":
                    node = ("index", node, ("lit", name))
                elif (kind, name) == ("op", "*"):
                    node = ("star", node)
                else:
                    raise ExpressionError(f"bad property {name!r} in {self.text!r}")
            elif tok == ("op", "["):
                self.take()
                if self.peek() == ("op", "*"):
                    self.take()
                    node = ("star", node)
                else:
                    node = ("index", node, self.or_())
                self.take("]")
            else:
                return node

    def primary(self):
        kind, value = self.take()
        if kind == "str":
            return ("lit", value[1:-1].replace("''", "'"))
        if kind == "num":
            return ("lit", float(int(value, 16)) if value.lower().startswith(("0x", "-0x")) else float(value))
        if (kind, value) == ("op", "("):
            node = self.or_()
            self.take(")")
            return node
        if kind == "id":
            if value in ("true", "false"):
                return ("lit", value == "true")
            if value == "null":
                return ("lit", None)
            if self.peek() == ("op", "("):
                self.take()
                args = []
                if self.peek() != ("op", ")"):
                    args.append(self.or_())
                    while self.peek() == ("op", ","):
                        self.take()
                        args.append(self.or_())
                self.take(")")
                return ("call", value.lower(), args)
            return ("ctx", value)
        raise ExpressionError(f"unexpected {value!r} in {self.text!r}")


def parse(text: str):
    return _Parser(text).parse()


def calls(node) -> set[str]:
    """The names of every function the expression calls."""
    if not isinstance(node, tuple):
        return set()
    out = {node[1]} if node[0] == "call" else set()
    for part in node[1:]:
        if isinstance(part, tuple):
            out |= calls(part)
        elif isinstance(part, list):
            for p in part:
                out |= calls(p)
    return out


def truthy(v) -> bool:
    # Falsy: false, 0, -0, "", null, NaN; everything else (objects and arrays too) is truthy.
    if v is None or v is False or v == "":
        return False
    if isinstance(v, float) and (v == 0 or math.isnan(v)):
        return False
    return True


def to_number(v) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, float):
        return v
    if isinstance(v, str):
        s = v.strip()
        if s == "":
            return 0.0
        try:
            return float(int(s, 16)) if s.lower().startswith("0x") else float(s)
        except ValueError:
            return math.nan
    return math.nan


def _compare(op: str, a, b) -> bool:
    if type(a) is type(b) and isinstance(a, str):
        x, y = a.casefold(), b.casefold()
    elif type(a) is type(b) and isinstance(a, (dict, list)):
        if op in ("==", "!="):
            return (a is b) == (op == "==")
        return False
    elif a is None and b is None:
        x = y = 0.0
    else:
        x, y = to_number(a), to_number(b)
        if math.isnan(x) or math.isnan(y):
            return op == "!="
    return {"==": x == y, "!=": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


def to_string(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, indent=2)
    return str(v)


def evaluate(node, contexts: dict, status: dict | None = None):
    """Evaluates a parsed expression; `status` maps status-function names to their values."""
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "ctx":
        name = node[1].lower()
        for key, value in contexts.items():
            if key.lower() == name:
                return value
        raise ExpressionError(f"unknown context {node[1]!r}")
    if kind == "index":
        obj = evaluate(node[1], contexts, status)
        key = evaluate(node[2], contexts, status)
        if isinstance(obj, _Filtered):
            picked = [evaluate(("index", ("lit", x), ("lit", key)), contexts, status) for x in obj]
            return _Filtered(x for x in picked if x is not None)
        if isinstance(obj, dict) and isinstance(key, str):
            for k, v in obj.items():
                if k.lower() == key.lower():
                    return v
            return None
        if isinstance(obj, list) and isinstance(key, float) and key.is_integer() and 0 <= key < len(obj):
            return obj[int(key)]
        return None
    if kind == "star":
        obj = evaluate(node[1], contexts, status)
        return _Filtered(obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else [])
    if kind == "not":
        return not truthy(evaluate(node[1], contexts, status))
    if kind == "and":
        left = evaluate(node[1], contexts, status)
        return evaluate(node[2], contexts, status) if truthy(left) else left
    if kind == "or":
        left = evaluate(node[1], contexts, status)
        return left if truthy(left) else evaluate(node[2], contexts, status)
    if kind == "cmp":
        return _compare(node[1], evaluate(node[2], contexts, status), evaluate(node[3], contexts, status))
    if kind == "call":
        name, args = node[1], [evaluate(a, contexts, status) for a in node[2]]
        if name in STATUS_FUNCTIONS:
            if status is None or name not in status:
                raise ExpressionError(f"{name}() is not available here")
            return status[name]
        if name == "contains":
            hay, needle = args
            if isinstance(hay, list):
                return any(_compare("==", x, needle) for x in hay)
            return to_string(needle).casefold() in to_string(hay).casefold()
        if name == "startswith":
            return to_string(args[0]).casefold().startswith(to_string(args[1]).casefold())
        if name == "endswith":
            return to_string(args[0]).casefold().endswith(to_string(args[1]).casefold())
        if name == "format":
            out = to_string(args[0])
            for i, a in enumerate(args[1:]):
                out = out.replace("{" + str(i) + "}", to_string(a))
            return out
        if name == "join":
            sep = to_string(args[1]) if len(args) > 1 else ","
            return sep.join(to_string(x) for x in args[0]) if isinstance(args[0], list) else to_string(args[0])
        if name == "tojson":
            return json.dumps(args[0], indent=2)
        if name == "fromjson":
            value = json.loads(to_string(args[0]))
            return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
        raise ExpressionError(f"function {name}() is not modelled")
    raise ExpressionError(f"unknown node {kind}")


_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def interpolate(value, contexts: dict):
    """A workflow value: `${{ expr }}` alone gives the expression's value, mixed with text a string."""
    if not isinstance(value, str):
        return value
    whole = _TEMPLATE.fullmatch(value.strip())
    if whole:
        return evaluate(parse(whole.group(1)), contexts)
    return _TEMPLATE.sub(lambda m: to_string(evaluate(parse(m.group(1)), contexts)), value)


def condition(value) -> tuple:
    """A job's or step's `if`, as GitHub reads it: `${{ }}` may be left out, and an expression
    that calls no status function gets `success() &&` in front of it. Text around a `${{ }}`
    makes a non-empty string, which is always true (a documented trap)."""
    if value is None:
        return ("call", "success", [])
    if isinstance(value, bool):
        node = ("lit", value)
    else:
        text = str(value).strip()
        whole = _TEMPLATE.fullmatch(text)
        if whole:
            node = parse(whole.group(1))
        elif "${{" in text:
            node = ("lit", text)
        else:
            node = parse(text)
    if not calls(node) & set(STATUS_FUNCTIONS):
        node = ("and", ("call", "success", []), node)
    return node


# Examples from GitHub's "Evaluate expressions" page, with what it says they give: a check that
# this model still reads the language as documented (workflow_jobs relies on each rule).
DOCUMENTED = [
    ("contains('Hello world', 'llo')", {}, True),
    ("startsWith('Hello world', 'He')", {}, True),
    ("endsWith('Hello world', 'ld')", {}, True),
    ("format('Hello {0} {1} {2}', 'Mona', 'the', 'Octocat')", {}, "Hello Mona the Octocat"),
    ("contains(github.event.issue.labels.*.name, 'bug')", {"github": {"event": {"issue": {"labels": [{"name": "bug"}]}}}}, True),
    ("join(github.event.issue.labels.*.name, ', ')", {"github": {"event": {"issue": {"labels": [{"name": "a"}, {"name": "b"}]}}}}, "a, b"),
    # The ternary idiom: && and || give an operand, not a boolean.
    ("github.ref == 'refs/heads/main' && 'main' || 'other'", {"github": {"ref": "refs/heads/dev"}}, "other"),
    # Strings compare ignoring case; mismatched types become numbers (null and '' are 0).
    ("'ABC' == 'abc'", {}, True),
    ("inputs.missing == ''", {"inputs": {}}, True),
    ("'1' == 1", {}, True),
    ("!null", {}, True),
]


def check_documented() -> list[str]:
    """The examples this evaluator gets wrong (empty when it reads them as documented)."""
    wrong = []
    for text, contexts, want in DOCUMENTED:
        got = evaluate(parse(text), contexts)
        if got != want or type(got) is not type(want):
            wrong.append(f"{text} gave {got!r}, GitHub documents {want!r}")
    if calls(condition("github.event_name == 'push'")) != {"success"}:
        wrong.append("an if without a status function did not get success()")
    return wrong
