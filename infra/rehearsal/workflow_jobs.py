"""Which jobs of .github/workflows run, in which order, for each way a release starts: the job
rules of GitHub Actions as its documentation states them, applied to the workflow files as they
are. Python: the rehearsal (rehearse.py) runs in the SAM CLI's environment, with PyYAML.

The rules ("Workflow syntax": jobs.<job_id>.needs, jobs.<job_id>.if; "Evaluate expressions":
status check functions; "Reuse workflows"):
- a job starts once every job in its `needs` has finished; its `if` is evaluated then;
- an `if` that calls none of success(), always(), cancelled(), failure() gets `success() &&`;
- success() is true only when every job up the job's needs chain succeeded: a skipped or failed
  ancestor makes it false, so "a failure or skip applies to all jobs in the dependency chain";
  failure() is true when an ancestor failed; cancelled() when the run was cancelled;
- a job whose `if` is false is skipped, and `needs.<job>.result` is 'skipped' for its dependants;
- a job with `uses:` runs the called workflow's jobs in the same run (its artifacts, the caller's
  `github` context), with `inputs` from `with:` over the `workflow_call` defaults; a
  `workflow_dispatch` run's `inputs` hold only the dispatch inputs (others are null); the called
  jobs' GITHUB_TOKEN permissions can only be lowered from the calling job's.
Sources: docs.github.com/en/actions/reference/workflows-and-actions/workflow-syntax
(#jobsjob_idneeds, #jobsjob_idif), .../reference/workflows-and-actions/expressions
(#status-check-functions), .../how-tos/reuse-automations/reuse-workflows, and for the OIDC
claims .../reference/security/oidc (the `sub` formats per environment, pull request and ref).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gha_expr
import yaml


class Broken(Exception):
    """A workflow path runs other jobs than a release needs, or cannot start."""


@dataclass
class Job:
    path: str  # "deploy/staging": the calling job, then the called workflow's job
    workflow: str  # the file that defines the job, ".github/workflows/deploy.yml"
    environment: str | None
    ancestors: list[str]
    steps: list[dict]  # each step's `uses` (without the ref) and its `with`, evaluated
    scripts: str


@dataclass
class Run:
    results: dict[str, str] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # the jobs that ran, in an order GitHub may run them
    jobs: dict[str, Job] = field(default_factory=dict)


LEVELS = {"none": 0, "read": 1, "write": 2}
# The steps whose inputs decide what a release does: which package it ships, which role it uses.
EVALUATED_STEPS = ("actions/upload-artifact", "actions/download-artifact", "aws-actions/configure-aws-credentials")


def load(root: Path, rel: str) -> dict:
    wf = yaml.safe_load((root / rel).read_text())
    # YAML 1.1 (PyYAML) reads the key `on` as true.
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def _order(jobs: dict) -> list[str]:
    done: list[str] = []
    pending = list(jobs)
    while pending:
        ready = [j for j in pending if all(n in done for n in _needs(jobs[j]))]
        if not ready:
            raise Broken(f"jobs {pending} wait on each other or on jobs that do not exist")
        done.extend(ready)
        pending = [j for j in pending if j not in ready]
    return done


def _permissions(value) -> dict[str, str] | None:
    if value is None:
        return None
    if value in ("read-all", "write-all"):
        return {"*": value.split("-")[0]}
    return dict(value)


def _level(perms: dict[str, str], scope: str) -> int:
    return LEVELS[perms.get(scope, perms.get("*", "none"))]


def _called(root: Path, uses: str) -> str:
    # `./path` and `$/path` (the self-repository form) both name this repository's file at the
    # caller's commit.
    for prefix in ("./", "$/"):
        if uses.startswith(prefix):
            return uses[len(prefix) :]
    raise Broken(f"`uses: {uses}` is not a workflow of this repository")


def _inputs(declared: dict, given: dict, where: str) -> dict:
    out = {}
    for name, spec in (declared or {}).items():
        spec = spec or {}
        if name in given:
            value = given[name]
        elif "default" in spec:
            value = spec["default"]
        elif spec.get("required"):
            raise Broken(f"{where}: required input {name} not given")
        else:
            value = {"boolean": False, "number": 0.0}.get(spec.get("type", "string"), "")
        if spec.get("type") == "number" and not isinstance(value, float):
            value = gha_expr.to_number(value)
        if spec.get("type") == "boolean" and isinstance(value, str):
            value = value.lower() == "true"
        out[name] = value
    unknown = set(given) - set(declared or {})
    if unknown:
        raise Broken(f"{where}: inputs {sorted(unknown)} are not declared")
    return out


def simulate(
    root: Path,
    workflow: str,
    github: dict,
    vars: dict,
    inputs: dict | None = None,
    fail: set[str] = frozenset(),
    cancelled: bool = False,
) -> Run:
    """Runs `workflow` for one event: every job succeeds unless its path is in `fail`."""
    wf = load(root, workflow)
    on = wf["on"]
    on = {on: None} if isinstance(on, str) else {e: None for e in on} if isinstance(on, list) else on
    event = github["event_name"]
    if event not in on:
        raise Broken(f"{workflow} does not run on {event}")
    if event == "workflow_dispatch":
        inputs = _inputs((on.get("workflow_dispatch") or {}).get("inputs"), inputs or {}, workflow)
    run = Run()
    _jobs(root, workflow, wf, github, vars, inputs or {}, "", [], None, fail, cancelled, run)
    return run


def _jobs(root, rel, wf, github, vars, inputs, prefix, outer, caller_perms, fail, cancelled, run) -> None:
    jobs = wf["jobs"]
    wf_perms = _permissions(wf.get("permissions"))
    local: dict[str, str] = {}
    closure: dict[str, set[str]] = {}
    for job_id in _order(jobs):
        job = jobs[job_id]
        path = prefix + job_id
        closure[job_id] = set()
        for n in _needs(job):
            closure[job_id] |= {n} | closure[n]
        ancestors = [prefix + a for a in sorted(closure[job_id])] + outer
        results = [run.results[a] for a in ancestors]
        status = {
            "success": all(r == "success" for r in results),
            "failure": any(r == "failure" for r in results),
            "cancelled": cancelled,
            "always": True,
        }
        contexts = {
            "github": github,
            "inputs": inputs,
            "vars": vars,
            "needs": {n: {"result": local[n], "outputs": {}} for n in _needs(job)},
        }
        try:
            runs = gha_expr.truthy(gha_expr.evaluate(gha_expr.condition(job.get("if")), contexts, status))
        except gha_expr.ExpressionError as e:
            raise Broken(f"{rel} job {job_id}: {e}") from e
        if not runs:
            local[job_id] = run.results[path] = "skipped"
            continue
        perms = _permissions(job.get("permissions")) or wf_perms
        if caller_perms is not None and perms is not None:
            for scope, level in perms.items():
                if LEVELS[level] > _level(caller_perms, scope):
                    raise Broken(
                        f"{rel} job {job_id} asks for {scope}: {level}, but the calling job allows "
                        f"{scope}: {caller_perms.get(scope, 'none')}: GitHub refuses to start the run"
                    )
        if "uses" in job:
            called = _called(root, job["uses"])
            target = load(root, called)
            if not isinstance(target["on"], dict) or "workflow_call" not in target["on"]:
                raise Broken(f"{called} has no `on: workflow_call` and cannot be called from {rel}")
            given = {k: gha_expr.interpolate(v, contexts) for k, v in (job.get("with") or {}).items()}
            call_inputs = _inputs((target["on"]["workflow_call"] or {}).get("inputs"), given, f"{rel} job {job_id}")
            _jobs(root, called, target, github, vars, call_inputs, path + "/", ancestors, perms, fail, cancelled, run)
            inner = [r for p, r in run.results.items() if p.startswith(path + "/")]
            local[job_id] = run.results[path] = "failure" if "failure" in inner else "success"
            continue
        env = {}
        step_contexts = dict(contexts, env=env)
        for scope in (wf.get("env") or {}, job.get("env") or {}):
            for k, v in scope.items():
                env[k] = gha_expr.to_string(gha_expr.interpolate(v, step_contexts))
        environment = job.get("environment")
        if isinstance(environment, dict):
            environment = environment.get("name")
        environment = gha_expr.interpolate(environment, contexts) if environment else None
        steps, scripts = [], []
        for step in job.get("steps", []):
            if "run" in step:
                scripts.append(step["run"])
            uses = step.get("uses", "").split("@")[0]
            if uses in EVALUATED_STEPS:
                try:
                    with_ = {k: gha_expr.interpolate(v, step_contexts) for k, v in (step.get("with") or {}).items()}
                except gha_expr.ExpressionError as e:
                    raise Broken(f"{rel} job {job_id}, step {uses}: {e}") from e
                steps.append({"uses": uses, "with": with_})
        run.jobs[path] = Job(path, rel, environment, ancestors, steps, "\n".join(scripts))
        run.order.append(path)
        local[job_id] = run.results[path] = "failure" if path in fail else "success"


def uploads(job: Job) -> set[str]:
    return {s["with"].get("name") for s in job.steps if s["uses"] == "actions/upload-artifact"}


def downloads(job: Job) -> set[str]:
    return {s["with"].get("name") for s in job.steps if s["uses"] == "actions/download-artifact"}


def assumed_role(job: Job) -> str | None:
    roles = [s["with"].get("role-to-assume") for s in job.steps if s["uses"] == "aws-actions/configure-aws-credentials"]
    if len(roles) > 1:
        raise Broken(f"{job.path} assumes {len(roles)} roles")
    return roles[0] if roles else None


def check_artifacts(run: Run, what: str) -> None:
    """Every artifact a job downloads was uploaded by a job that finished before it in this run."""
    for job in (run.jobs[p] for p in run.order):
        for name in downloads(job):
            makers = [a for a in job.ancestors if a in run.jobs and name in uploads(run.jobs[a])]
            if not makers:
                raise Broken(f"{what}: {job.path} downloads artifact {name!r}, which no job before it uploads")


# --- the release paths ------------------------------------------------------------------------

REPOSITORY = "owner/repo"
MAIN = "refs/heads/main"
CI, TRAIN, DEPLOY = (f".github/workflows/{n}.yml" for n in ("ci", "train", "deploy"))
# What each way of starting a release must run (the project's policy); which jobs do run is
# what `simulate` derives from the files under GitHub's rules. A listed job needs the one before.
PATHS = [
    ("push to main", CI, "push", MAIN, None, set(), ["test", "deploy/staging", "deploy/production"]),
    ("push to main, staging fails", CI, "push", MAIN, None, {"deploy/staging"}, ["test", "deploy/staging"]),
    ("push to main, the tests fail", CI, "push", MAIN, None, {"test"}, ["test"]),
    ("pull request", CI, "pull_request", "refs/pull/7/merge", None, set(), ["test"]),
    (
        "train release",
        TRAIN,
        "workflow_dispatch",
        MAIN,
        {"epochs": 1, "width": 16},
        set(),
        ["train", "deploy/package", "deploy/staging", "deploy/production"],
    ),
    ("train release, training fails", TRAIN, "workflow_dispatch", MAIN, {}, {"train"}, ["train"]),
    ("deploy.yml by hand", DEPLOY, "workflow_dispatch", MAIN, {}, set(), ["package", "staging", "production"]),
    ("deploy.yml by hand, staging fails", DEPLOY, "workflow_dispatch", MAIN, {}, {"staging"}, ["package", "staging"]),
    ("deploy.yml by hand from a branch", DEPLOY, "workflow_dispatch", "refs/heads/try", {}, set(), ["package", "staging"]),
]
# The claims of GitHub's OIDC token that AWS STS can check in a trust policy (sub and aud, and
# since January 2026 these GitHub claims); any other claim is absent from the request context.
TRUST_CLAIMS = ("sub", "aud", "actor", "job_workflow_ref", "repository", "workflow", "ref", "environment")


def github_context(event: str, ref: str, workflow: str) -> dict:
    return {
        "event_name": event,
        "ref": ref,
        "ref_name": ref.split("/", 2)[-1],
        "repository": REPOSITORY,
        "workflow_ref": f"{REPOSITORY}/{workflow}@{ref}",
        "event": {},
    }


def oidc_claims(job: Job, github: dict) -> dict[str, str]:
    """GitHub's documented claims for this job's token (audience: configure-aws-credentials')."""
    if job.environment:
        sub = f"repo:{REPOSITORY}:environment:{job.environment}"
    elif github["event_name"] in ("pull_request", "pull_request_target"):
        sub = f"repo:{REPOSITORY}:pull_request"
    else:
        sub = f"repo:{REPOSITORY}:ref:{github['ref']}"
    claims = {
        "sub": sub,
        "aud": "sts.amazonaws.com",
        "actor": "someone",
        "repository": REPOSITORY,
        "ref": github["ref"],
        "workflow": "Deploy",
        "job_workflow_ref": f"{REPOSITORY}/{job.workflow}@{github['ref']}",
        "event_name": github["event_name"],
    }
    if job.environment:
        claims["environment"] = job.environment
    return {f"token.actions.githubusercontent.com:{k}": v for k, v in claims.items() if k in TRUST_CLAIMS}


def check(root: Path, vars: dict, admits) -> list[str]:
    """Runs every path; `admits(role_arn, claims)` says whether that role's trust policy lets a
    token with these claims assume it. Returns one line per path."""
    lines = []
    roles: dict[str, set[str]] = {}  # environment -> the roles its jobs assume
    for what, workflow, event, ref, inputs, fail, expected in PATHS:
        github = github_context(event, ref, workflow)
        run = simulate(root, workflow, github, vars, inputs, fail)
        ran = run.order
        skipped = sorted(p for p, r in run.results.items() if r == "skipped")
        if set(ran) != set(expected):
            raise Broken(
                f"{what}: the jobs that run are {ran} (skipped: {skipped}); a release needs {expected}"
            )
        for before, after in zip(expected, expected[1:]):
            if before not in run.jobs[after].ancestors:
                raise Broken(f"{what}: {after} may start before {before} has finished (it does not need it)")
        check_artifacts(run, what)
        for path in ran:
            job = run.jobs[path]
            if job.environment == "production":
                staged = [a for a in job.ancestors if a in run.jobs and run.jobs[a].environment == "staging"]
                if not staged or any(run.results[a] != "success" for a in staged):
                    raise Broken(f"{what}: {path} deploys production without a successful staging job before it")
            role = assumed_role(job)
            if role is None:
                continue
            if not role:
                raise Broken(f"{what}: {path} assumes an empty role: its variable is no output of bootstrap.yaml")
            if not admits(role, oidc_claims(job, github)):
                raise Broken(f"{what}: {path} (environment {job.environment}) may not assume {role}: its trust policy refuses the job's token")
            roles.setdefault(job.environment or "", set()).add(role)
        lines.append(f"{what}: {' -> '.join(ran)}" + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
    # One role per environment, which no other environment's token (and, for production, no
    # token from another branch) can assume.
    for env, env_roles in roles.items():
        for role in env_roles:
            for other in roles:
                if other == env:
                    continue
                job = Job("x", DEPLOY, other or None, [], [], "")
                if admits(role, oidc_claims(job, github_context("push", MAIN, DEPLOY))):
                    raise Broken(f"{role}, assumed in environment {env!r}, also admits a token of environment {other!r}")
            if env == "production":
                job = Job("x", DEPLOY, env, [], [], "")
                if admits(role, oidc_claims(job, github_context("workflow_dispatch", "refs/heads/try", DEPLOY))):
                    raise Broken(f"{role} admits a production token from refs/heads/try, not only from main")
    return lines
