"""Dataset tools: converters from raw public formats to RecBole atomic files, and validation.

    python -m recbole_kd.datasets convert {mind,lastfm,seqfile} --input DIR_OR_FILE --output DIR [--name NAME] [--force]
    python -m recbole_kd.datasets validate FILE [FILE ...]

``convert`` writes ``DIR/NAME/NAME.inter`` (and ``.item`` / ``.net`` where the format has them), so
``--data_path=DIR --dataset=NAME`` loads the result. Every converter streams its input line by line,
is deterministic (same input, same bytes) and writes atomically (a temporary folder next to the output,
renamed at the end). See :mod:`recbole_kd.datasets.common`.

This package imports nothing heavy at import time: :mod:`recbole_kd.config` calls
:func:`recbole_kd.datasets.validate.validate_dataset` before every dataset load.
"""

FORMATS = ("mind", "lastfm", "seqfile")
