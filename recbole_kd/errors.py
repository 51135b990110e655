"""Every exception recbole-kd raises on purpose, in one module that imports nothing.

The command-line front ends print an error of ``USER_ERRORS`` (and the other usage errors below) as one
line (what, where, what to do) and exit with status 2; ``TrainingError`` exits with status 3. The
modules that raise these import them from here, so importing an error never pulls in the rest of the
package. The one exception to this rule is ``recbole_kd/serving/artefact.py``: an exported artefact
carries a copy of that file as a stand-alone loader (torch and json only), so its own errors
(``ArtefactError``, ``RequestError``, ``UnknownTokenError``) stay inside it.
"""


class ConfigError(Exception):
    """A setting (from the command line, a yaml file or a suite) that cannot be used."""


class UnknownDatasetError(Exception):
    """A dataset name with no atomic files where the run looks for them."""


class UnknownModelError(Exception):
    """A model name that is neither ours nor RecBole's."""


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message says what, which file and what to do."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (read-only folder, disk full); the previous one is kept."""


class DataValidationError(Exception):
    """A malformed atomic file; the message is one line: file, line, column and what is wrong."""


class ConversionError(Exception):
    """Bad converter input or output location; the message is one line naming the file (and line)."""


class TransferError(Exception):
    """Source and target cannot be combined as asked; the message says what and what to do."""


class TextUnavailable(Exception):
    """Item text cannot be used for this dataset (no text field, or no sentence encoder installed)."""


class SuiteError(Exception):
    """A benchmark suite file that cannot be run; the message says what and where."""


class SpaceError(ValueError):
    """A hyper-parameter search-space file that cannot be read."""


class ExportError(Exception):
    """Bad input to ``export`` (output folder, result file, unsupported model): one line, exit status 2."""


class ServeError(Exception):
    """The recommendation service cannot start (e.g. its port is taken): one line, exit status 2."""


class UsageError(Exception):
    """Bad command-line arguments."""


class TrainingError(Exception):
    """Training cannot go on (e.g. a NaN loss); the CLI prints it as one line and exits with status 3."""


USER_ERRORS = (UnknownModelError, UnknownDatasetError, ConfigError, CheckpointError, DataValidationError, TransferError)
