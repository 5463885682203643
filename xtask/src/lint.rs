//! The infrastructure linters, all from the pinned tools venv, each of which must report nothing:
//!
//! - `cfn-lint` with the serverless rules on `infra/template.yaml`, and again on the template
//!   after the real SAM transform for each way it can be deployed (zip or image; no auth, IAM or
//!   API key; bundled or S3 model), because conditions decide which resources exist;
//! - `cfn-lint` on every Step Functions definition in those variants, as a plain
//!   `AWS::StepFunctions::StateMachine` with its `Definition` as an object: SAM turns a definition
//!   into a `DefinitionString`, which cfn-lint does not look inside;
//! - `checkov` on the template, those transformed variants, the Dockerfile and the workflows;
//! - `actionlint` (with `shellcheck` on every `run:` script), `zizmor` (offline) on the workflows;
//! - `hadolint` on the Dockerfile and `shellcheck` on the scripts in `infra/` and `scripts/`.
//!
//! Skipped checks live in the files themselves, each with its reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::env::Env;
use crate::paths;

pub const TEMPLATE: &str = "infra/template.yaml";
/// The once-per-account stack of deploy roles and shared buckets.
pub const BOOTSTRAP: &str = "infra/bootstrap.yaml";
pub const DOCKERFILE: &str = "infra/Dockerfile";
pub const WORKFLOWS: &str = ".github/workflows";

/// The deployment modes whose transformed templates are linted: parameter overrides each.
pub const VARIANTS: &[(&str, &[(&str, &str)])] = &[
    (
        "zip-public-packaged-model",
        &[
            ("PackageType", "Zip"),
            ("AuthMode", "NONE"),
            ("ModelPath", "/var/task/model.onnx"),
        ],
    ),
    (
        "zip-iam-s3",
        &[
            ("PackageType", "Zip"),
            ("AuthMode", "AWS_IAM"),
            ("ModelKey", "models/m.onnx"),
            ("ReleaseId", "0123456789abcdef0123456789abcdef"),
        ],
    ),
    (
        "zip-staging-shared-model-bucket",
        &[
            ("PackageType", "Zip"),
            ("ModelBucketName", "shared-models"),
            ("ModelKey", "models/m.onnx"),
            ("TrafficShift", "AllAtOnce"),
        ],
    ),
    (
        "image-apikey-alarms",
        &[
            ("PackageType", "Image"),
            ("AuthMode", "API_KEY"),
            ("ImageUri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/infer:1"),
            ("AlarmEmail", "ops@example.com"),
            ("ReservedConcurrency", "-1"),
        ],
    ),
];

/// `infra/rehearsal/sam_transform.py`: the SAM transform of one deployment (the rehearsal uses it
/// too), run with the tools venv's translator.
const SAM_TRANSFORM: &str = "infra/rehearsal/sam_transform.py";

/// Every state machine of a transformed template as a plain `AWS::StepFunctions::StateMachine`
/// whose `Definition` is the parsed object, which is what cfn-lint's E3601 validates against the
/// States Language schema. `${...}` substitutions stay as they are: in a SAM definition they can
/// only stand in strings. `what` names the template in errors.
fn state_machine_template(template: &Value, what: &str) -> Result<Value> {
    let resources = template["Resources"]
        .as_object()
        .with_context(|| format!("{what} has no Resources object"))?;
    let mut machines = Map::new();
    for (name, resource) in resources {
        if resource["Type"] != "AWS::StepFunctions::StateMachine" {
            continue;
        }
        let props = resource["Properties"]
            .as_object()
            .with_context(|| format!("{what}: the state machine {name} has no Properties"))?;
        let definition = match props.get("DefinitionString") {
            // SAM writes the definition's JSON text line by line in a Fn::Join.
            Some(Value::Object(join)) if join.contains_key("Fn::Join") => {
                let parts = join["Fn::Join"].as_array().filter(|p| p.len() == 2);
                let (separator, lines) = parts
                    .and_then(|p| Some((p[0].as_str()?, p[1].as_array()?)))
                    .with_context(|| format!("{what}: {name}'s DefinitionString is not a Fn::Join of strings"))?;
                let lines = lines
                    .iter()
                    .map(|l| l.as_str())
                    .collect::<Option<Vec<_>>>()
                    .with_context(|| format!("{what}: {name}'s DefinitionString joins something not a string"))?;
                parse_definition(&lines.join(separator), name, what)?
            }
            Some(Value::String(text)) => parse_definition(text, name, what)?,
            _ => props.get("Definition").cloned().unwrap_or(Value::Null),
        };
        // The other properties name other resources; tracing is kept for the serverless rules.
        let tracing = props
            .get("TracingConfiguration")
            .cloned()
            .unwrap_or_else(|| json!({"Enabled": false}));
        machines.insert(
            name.clone(),
            json!({"Type": "AWS::StepFunctions::StateMachine", "Properties": {
                "RoleArn": "arn:aws:iam::123456789012:role/placeholder",
                "Definition": definition,
                "TracingConfiguration": tracing,
            }}),
        );
    }
    Ok(json!({"AWSTemplateFormatVersion": "2010-09-09", "Resources": machines}))
}

fn parse_definition(text: &str, name: &str, what: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{what}: {name}'s DefinitionString is not JSON"))
}

/// cfn-lint on the state machine definitions of each transformed `variants` file.
pub fn state_machines(env: &Env, variants: &[PathBuf]) -> Result<()> {
    let mut files = Vec::new();
    for variant in variants {
        let what = names(std::slice::from_ref(variant));
        let text = std::fs::read_to_string(variant).with_context(|| format!("reading {what}"))?;
        let template: Value = serde_json::from_str(&text).with_context(|| format!("{what} is not JSON"))?;
        let out = variant.with_extension("state-machines.json");
        let machines = serde_json::to_string_pretty(&state_machine_template(&template, &what)?)?;
        std::fs::write(&out, machines).with_context(|| format!("writing {}", out.display()))?;
        files.push(out);
    }
    cfn_lint(env, &files, &[])
}

/// Runs `cmd` with its output captured: silent when it passes, the full output when not.
pub fn check(name: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    let out = cmd.output().with_context(|| {
        format!(
            "{name}: could not start {:?} (run `cargo xtask setup`)",
            cmd.get_program()
        )
    })?;
    if !out.status.success() {
        bail!(
            "{name} reported findings ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("xtask: {name}: clean ({:.1?})", started.elapsed());
    Ok(())
}

/// The first line of `tool --version`, for the log.
fn version(env: &Env, tool: &str) -> String {
    env.command(tool)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
            // The first line that carries a number (shellcheck puts a banner first).
            text.lines()
                .find(|l| l.chars().any(|c| c.is_ascii_digit()))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "not found".to_owned())
}

pub fn cfn_lint(env: &Env, templates: &[PathBuf], ignore: &[&str]) -> Result<()> {
    let mut cmd = env.command("cfn-lint");
    cmd.args(["--append-rules", "cfn_lint_serverless.rules"]);
    if !ignore.is_empty() {
        cmd.arg("--ignore-checks").args(ignore);
    }
    cmd.arg("--").args(templates);
    check(&format!("cfn-lint {}", names(templates)), &mut cmd)
}

pub fn checkov(env: &Env, framework: &str, files: &[PathBuf]) -> Result<()> {
    let mut cmd = env.command("checkov");
    cmd.args(["--framework", framework, "--quiet", "--compact", "--skip-download"]);
    for f in files {
        cmd.arg("--file").arg(f);
    }
    check(&format!("checkov ({framework}) {}", names(files)), &mut cmd)
}

/// Transforms `template` once per variant into `dir`, returning the written files.
pub fn sam_variants(env: &Env, template: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::new();
    for (name, overrides) in VARIANTS {
        let file = dir.join(format!("template-{name}.json"));
        let mut cmd = env.command("python");
        cmd.arg(paths::repo_root().join(SAM_TRANSFORM)).arg(template).arg(&file);
        cmd.args(overrides.iter().map(|(k, v)| format!("{k}={v}")));
        check(&format!("SAM transform ({name})"), &mut cmd)?;
        out.push(file);
    }
    Ok(out)
}

pub fn actionlint(env: &Env, workflows: &[PathBuf]) -> Result<()> {
    // shellcheck (from the venv) checks every `run:` script; pyflakes is not used by any step.
    let mut cmd = env.command("actionlint");
    cmd.args(["-shellcheck", "shellcheck", "-pyflakes", ""]).args(workflows);
    check("actionlint", &mut cmd)
}

pub fn zizmor(env: &Env, inputs: &[PathBuf]) -> Result<()> {
    let mut cmd = env.command("zizmor");
    cmd.args(["--offline", "--no-progress", "--format", "plain"])
        .args(inputs);
    check("zizmor", &mut cmd)
}

pub fn hadolint(env: &Env, dockerfile: &Path) -> Result<()> {
    check(
        "hadolint",
        env.command("hadolint")
            .args(["--failure-threshold", "info"])
            .arg(dockerfile),
    )
}

pub fn shellcheck(env: &Env, scripts: &[PathBuf]) -> Result<()> {
    check(
        "shellcheck",
        env.command("shellcheck").arg("--severity=style").args(scripts),
    )
}

fn names(files: &[PathBuf]) -> String {
    let root = paths::repo_root();
    files
        .iter()
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn files_with(dir: &Path, suffixes: &[&str]) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_str().is_some_and(|s| suffixes.iter().any(|x| s.ends_with(x))))
        .collect();
    files.sort();
    Ok(files)
}

/// Every linter on the repository's own infra/ and .github/.
pub fn run(env: &Env) -> Result<()> {
    eprintln!("xtask: == infrastructure lints ==");
    for tool in ["cfn-lint", "checkov", "actionlint", "zizmor", "hadolint", "shellcheck"] {
        eprintln!("xtask:   {tool}: {}", version(env, tool));
    }
    let root = paths::repo_root();
    let template = root.join(TEMPLATE);
    let workflows = files_with(&root.join(WORKFLOWS), &[".yml", ".yaml"])?;
    let mut scripts = files_with(&root.join("infra"), &[".sh"])?;
    // The dev scripts too: they run on other people's machines (a GPU host, a load generator).
    scripts.extend(files_with(&root.join("scripts"), &[".sh"])?);

    let mut failures = Vec::new();
    let mut record = |result: Result<()>| {
        if let Err(e) = result {
            eprintln!("xtask: {e:#}");
            failures.push(e);
        }
    };
    let bootstrap = root.join(BOOTSTRAP);
    record(cfn_lint(env, &[template.clone(), bootstrap.clone()], &[]));
    // Only on the transformed output: the transform substitutes ImageUri in place (see the template).
    let variants = sam_variants(env, &template, &root.join("target/xtask/lint"));
    match variants {
        Ok(variants) => {
            record(cfn_lint(env, &variants, &["W2001"]));
            record(state_machines(env, &variants));
            let mut all = vec![template.clone(), bootstrap];
            all.extend(variants);
            record(checkov(env, "cloudformation", &all));
        }
        Err(e) => record(Err(e)),
    }
    record(checkov(env, "dockerfile", &[root.join(DOCKERFILE)]));
    record(checkov(env, "github_actions", &workflows));
    record(actionlint(env, &workflows));
    record(zizmor(env, &workflows));
    record(hadolint(env, &root.join(DOCKERFILE)));
    if !scripts.is_empty() {
        record(shellcheck(env, &scripts));
    }
    if !failures.is_empty() {
        bail!("{} infrastructure lint(s) failed (details above)", failures.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each linter, run for real on a small file with a known problem, must object; the
    //! repository's own files pass in `cargo xtask test` (and in `repo_files_are_clean` here).
    use super::*;

    fn env() -> Result<Env> {
        let tools = paths::native_link().join("tools");
        anyhow::ensure!(
            tools.join("bin/cfn-lint").exists(),
            "{} has no linters: run `cargo xtask setup`",
            tools.display()
        );
        Ok(Env {
            libtorch: None,
            ort_dir: paths::native_link().join("onnxruntime"),
            tools: Some(tools),
            sam: None,
            machete: None,
        })
    }

    fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn rejects(result: Result<()>, expect: &str) -> Result<()> {
        match result {
            Ok(()) => bail!("the linter passed a file with a known problem ({expect})"),
            Err(e) => {
                let text = format!("{e:#}");
                anyhow::ensure!(text.contains(expect), "expected {expect:?} in:\n{text}");
                Ok(())
            }
        }
    }

    const BAD_WORKFLOW: &str = "on: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n      \
        - uses: actions/checkout@v4\n      - run: echo ${{ github.event.head_commit.message }}\n";

    #[test]
    fn zizmor_and_actionlint_reject_an_unpinned_injectable_workflow() -> Result<()> {
        let env = env()?;
        let dir = tempfile::tempdir()?;
        let wf = write(dir.path(), ".github/workflows/bad.yml", BAD_WORKFLOW)?;
        rejects(zizmor(&env, std::slice::from_ref(&wf)), "unpinned-uses")?;
        rejects(zizmor(&env, std::slice::from_ref(&wf)), "template-injection")?;
        rejects(actionlint(&env, &[wf]), "potentially untrusted")?;
        Ok(())
    }

    #[test]
    fn hadolint_rejects_a_latest_root_image() -> Result<()> {
        let env = env()?;
        let dir = tempfile::tempdir()?;
        let df = write(
            dir.path(),
            "Dockerfile",
            "FROM debian:latest\nRUN apt-get update && apt-get install -y curl\n",
        )?;
        rejects(hadolint(&env, &df), "DL3007")
    }

    #[test]
    fn cfn_lint_and_checkov_reject_a_public_unencrypted_bucket() -> Result<()> {
        let env = env()?;
        let dir = tempfile::tempdir()?;
        let t = write(
            dir.path(),
            "t.yaml",
            "AWSTemplateFormatVersion: \"2010-09-09\"\nResources:\n  B:\n    Type: AWS::S3::Bucket\n    \
             Properties:\n      AccessControl: PublicRead\n      Versioning: true\n",
        )?;
        rejects(cfn_lint(&env, std::slice::from_ref(&t), &[]), "E3002")?;
        rejects(checkov(&env, "cloudformation", &[t]), "CKV_AWS_20")
    }

    #[test]
    fn the_sam_transform_resolves_each_variant() -> Result<()> {
        let env = env()?;
        let dir = tempfile::tempdir()?;
        let files = sam_variants(&env, &paths::repo_root().join(TEMPLATE), dir.path())?;
        assert_eq!(files.len(), VARIANTS.len());
        let image = std::fs::read_to_string(files.last().context("variants")?)?;
        // SAM turned `!Ref ImageFunction.Alias` into the generated alias resource.
        assert!(
            image.contains("\"ImageFunctionAliaslive\""),
            "no alias in the image variant"
        );
        assert!(!image.contains(".Alias\""), "an unresolved .Alias reference is left");
        Ok(())
    }

    #[test]
    fn cfn_lint_rejects_a_broken_state_machine_definition() -> Result<()> {
        let env = env()?;
        let dir = tempfile::tempdir()?;
        // What SAM makes of a definition: its JSON text, line by line, in a Fn::Join.
        let transformed = r#"{"Resources": {"Bulk": {"Type": "AWS::StepFunctions::StateMachine",
            "Properties": {"RoleArn": "arn:aws:iam::123456789012:role/r", "DefinitionString": {"Fn::Join": ["\n", [
                "{\"StartAt\": \"M\", \"States\": {\"M\": {\"Type\": \"Map\", \"MaxConcurrency\": \"ten\",",
                "\"End\": true, \"ItemProcessor\": {\"StartAt\": \"P\", \"States\": {\"P\": {\"Type\": \"Pass\", \"End\": true}}}}}}"
            ]]}}}}}"#;
        let file = write(dir.path(), "template-x.json", transformed)?;
        rejects(state_machines(&env, &[file]), "'ten' is not of type 'number'")
    }

    #[test]
    fn state_machines_come_out_with_their_definition_parsed() -> Result<()> {
        let template = json!({"Resources": {
            "Joined": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
                "DefinitionString": {"Fn::Join": ["\n", ["{\"StartAt\": \"P\",", "\"States\": {\"P\": {\"Type\": \"Pass\", \"End\": true}}}"]]},
                "TracingConfiguration": {"Enabled": true}}},
            "Plain": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {
                "DefinitionString": "{\"StartAt\": \"W\", \"States\": {}}"}},
            "Object": {"Type": "AWS::StepFunctions::StateMachine", "Properties": {"Definition": {"StartAt": "O"}}},
            "Bucket": {"Type": "AWS::S3::Bucket", "Properties": {}},
        }});
        let out = state_machine_template(&template, "t.json")?;
        let resources = out["Resources"].as_object().context("resources")?;
        assert_eq!(resources.len(), 3, "only the state machines: {out}");
        let joined = &resources["Joined"]["Properties"];
        assert_eq!(joined["Definition"]["States"]["P"]["Type"], "Pass");
        assert_eq!(joined["TracingConfiguration"]["Enabled"], true);
        assert_eq!(resources["Plain"]["Properties"]["Definition"]["StartAt"], "W");
        assert_eq!(
            resources["Plain"]["Properties"]["TracingConfiguration"]["Enabled"],
            false
        );
        assert_eq!(resources["Object"]["Properties"]["Definition"]["StartAt"], "O");
        assert_eq!(out["AWSTemplateFormatVersion"], "2010-09-09");

        let broken = json!({"Resources": {"M": {"Type": "AWS::StepFunctions::StateMachine",
            "Properties": {"DefinitionString": {"Fn::Join": ["", ["{", 3]]}}}}});
        let err = format!(
            "{:#}",
            state_machine_template(&broken, "t.json")
                .err()
                .context("a number in the join")?
        );
        assert!(
            err.contains("t.json: M's DefinitionString joins something not a string"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn the_template_deploys_the_zip_that_package_writes() -> Result<()> {
        let template = std::fs::read_to_string(paths::repo_root().join(TEMPLATE))?;
        let zip = crate::package::default_output(crate::package::Arch::Arm64);
        let rel = zip.strip_prefix(paths::repo_root())?;
        assert!(
            template.contains(&format!("CodeUri: ../{}", rel.display())),
            "the template's CodeUri is not ../{}",
            rel.display()
        );
        Ok(())
    }
}
