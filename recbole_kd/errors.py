"""Errors that are the user's to fix: the CLI prints them as one line and exits with status 2."""
from recbole_kd.checkpoint import CheckpointError
from recbole_kd.config import ConfigError, UnknownDatasetError
from recbole_kd.datasets.validate import DataValidationError
from recbole_kd.registry import UnknownModelError

USER_ERRORS = (UnknownModelError, UnknownDatasetError, ConfigError, CheckpointError, DataValidationError)
