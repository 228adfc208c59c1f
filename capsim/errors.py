"""Errors a user can fix: each names the field at fault and what to do."""

from __future__ import annotations


class CapsimError(Exception):
    """Base class for errors caused by user input (exit status 2 in the CLI)."""


class ScenarioError(CapsimError):
    """One or more problems in a scenario, one line each: ``field.path: problem``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
