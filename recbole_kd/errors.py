"""Errors that are the user's to fix: the CLI prints them as one line and exits with status 2."""
from recbole_kd.checkpoint import CheckpointError
from recbole_kd.config import ConfigError, UnknownDatasetError
from recbole_kd.datasets.validate import DataValidationError
from recbole_kd.registry import UnknownModelError
from recbole_kd.trainer import TrainingError  # noqa: F401  (exit status 3)
from recbole_kd.transfer.mapping import TransferError

USER_ERRORS = (UnknownModelError, UnknownDatasetError, ConfigError, CheckpointError, DataValidationError, TransferError)
