"""Shipping a trained model: ``export`` (checkpoint -> self-contained artefact), ``recommend`` and ``serve``.

``artefact`` (the loader) needs only torch and json; ``export`` needs RecBole and the dataset, once;
``service`` needs starlette and uvicorn (the ``serve`` extra). See docs/serving.md.
"""
