"""Errors meant for people: each says what was wrong and what is allowed."""


class InvbenchError(Exception):
    """Base class of the errors the CLI reports as usage or input errors (exit code 2)."""


class UnknownNameError(InvbenchError, KeyError):
    """A name that no registry entry has."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ConfigError(InvbenchError, ValueError):
    """A bad option, hyperparameter or sweep setting."""


class DataUnavailableError(InvbenchError, RuntimeError):
    """No data source could provide a dataset."""


class SubmissionError(InvbenchError):
    """The scheduler refused a submission (a bad partition, account or limit): nothing was submitted."""
