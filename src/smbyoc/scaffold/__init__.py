"""``smbyoc init``: scaffold a bring-your-own-container project a team can commit as is.

:mod:`~smbyoc.scaffold.names` checks the project name against everything it becomes (ECR repositories,
CloudFormation stacks, the SageMaker endpoint, a Python name); :mod:`~smbyoc.scaffold.project` renders the
templates under ``smbyoc/templates/scaffold/`` into a new directory, all or nothing.
"""

from __future__ import annotations

from smbyoc.scaffold.names import ProjectName
from smbyoc.scaffold.project import ProjectSpec, parse_ci, render_project

__all__ = ["ProjectName", "ProjectSpec", "parse_ci", "render_project"]
