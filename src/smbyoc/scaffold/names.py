"""A project's name, checked against everything ``smbyoc init`` turns it into.

One ``NAME`` becomes the ECR repositories ``NAME/train`` and ``NAME/serve``, the CloudFormation stacks
``NAME-pipeline`` and ``NAME-endpoint``, the SageMaker endpoint ``NAME``, the CodeBuild project
``NAME-build``, the local image tags ``NAME-train`` / ``NAME-serve`` and the Python name ``NAME`` with
``-`` read as ``_`` (logger names in the generated code). Each rule is checked as its owner states it
(contract-endpoints.md §8.1 for ECR, the API models for the others), and the first one the name breaks
is reported in one line that names it.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass

from smbyoc.errors import ConfigError

#: ECR ``RepositoryName`` (BOTO-ECR): 2-256 characters, lowercase components joined by ``.``, ``_``, ``__``
#: or ``-+``, namespaces with ``/``; the ECR guide adds "must start with a letter".
ECR_REPOSITORY = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
ECR_MAX = 256
#: CloudFormation stack names: a letter, then letters, digits and hyphens; at most 128 characters.
STACK_NAME = re.compile(r"[A-Za-z][-A-Za-z0-9]*")
STACK_MAX = 128
#: SageMaker ``EndpointName`` (BOTO-SM): ``^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``, at most 63 characters.
ENDPOINT_NAME = re.compile(r"[a-zA-Z0-9](?:-*[a-zA-Z0-9]){0,62}")
ENDPOINT_MAX = 63
#: CodeBuild project names (BOTO-CB ``ProjectName``): ``[A-Za-z0-9][A-Za-z0-9\-_]{1,254}``.
CODEBUILD_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_]{1,254}")
MIN_LENGTH = 2


@dataclass(frozen=True)
class ProjectName:
    """A checked project name and the names derived from it (build with :meth:`parse`)."""

    name: str

    @classmethod
    def parse(cls, text: str) -> ProjectName:
        """``text`` as a project name, or :class:`ConfigError` naming the rule it breaks."""
        project = cls(text)
        problem = project.problem()
        if problem is not None:
            raise ConfigError(f"{text!r} {problem}", key="NAME")
        return project

    def problem(self) -> str | None:
        """Why this name cannot be used (the first rule it breaks), or None."""
        name = self.name
        if len(name) < MIN_LENGTH:
            return f"is too short: a project name has at least {MIN_LENGTH} characters (ECR repository names)"
        if name != name.strip() or not name.isascii() or not name.isprintable():
            return "has spaces or characters outside printable ASCII; use lowercase letters, digits and '-'"
        if not name[0].isalpha():
            return "must start with a letter (CloudFormation stack names and Python names do)"
        if name.lower() != name:
            return f"must be lowercase (ECR repository names are){self._try()}"
        for repository in self.ecr_repositories:
            if not ECR_REPOSITORY.fullmatch(repository) or len(repository) > ECR_MAX:
                return (f"cannot name the ECR repository {repository!r}: use lowercase letters and digits joined "
                        f"by '-', '.' or '_'{self._try()}")
        for stack in self.stack_names:
            if not STACK_NAME.fullmatch(stack):
                return (f"cannot name the CloudFormation stack {stack!r}: use letters, digits and '-' "
                        f"only{self._try()}")
            if len(stack) > STACK_MAX:
                return f"is too long for the CloudFormation stack {stack!r} (at most {STACK_MAX} characters)"
        if not ENDPOINT_NAME.fullmatch(self.endpoint_name) or len(self.endpoint_name) > ENDPOINT_MAX:
            return (f"cannot name the SageMaker endpoint {self.endpoint_name!r}: at most {ENDPOINT_MAX} letters, "
                    "digits and '-', ending with a letter or digit")
        if not CODEBUILD_PROJECT.fullmatch(self.codebuild_project):
            return f"cannot name the CodeBuild project {self.codebuild_project!r}"
        if not self.python_name.isidentifier() or keyword.iskeyword(self.python_name):
            return f"gives {self.python_name!r}, which is not a usable Python name"
        return None

    def _try(self) -> str:
        """``: try 'x'`` with the name made of lowercase letters, digits and single hyphens, when usable."""
        candidate = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")
        if candidate != self.name and ProjectName(candidate).problem() is None:
            return f": try {candidate!r}"
        return ""

    @property
    def python_name(self) -> str:
        return self.name.replace("-", "_")

    @property
    def ecr_repositories(self) -> tuple[str, str]:
        """The ECR repositories of the train and serve images."""
        return (f"{self.name}/train", f"{self.name}/serve")

    @property
    def stack_names(self) -> tuple[str, ...]:
        """The CloudFormation stacks the generated templates are deployed as."""
        return (f"{self.name}-pipeline", f"{self.name}-endpoint", f"{self.name}-github-role")

    @property
    def endpoint_name(self) -> str:
        return self.name

    @property
    def codebuild_project(self) -> str:
        return f"{self.name}-build"

    def image(self, kind: str) -> str:
        """The local image name of ``kind`` (``train``/``serve``), e.g. ``churn-serve``."""
        return f"{self.name}-{kind}"
