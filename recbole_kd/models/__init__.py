"""Our models: importing this package registers the students and teachers. The ``KD-<student>`` and
``Transfer-<student>`` entries (:mod:`recbole_kd.models.distill`, :mod:`recbole_kd.models.transfer`) need the
distillation and transfer trainers, which need these models, so the registry imports them after this package
(``recbole_kd.registry.PLUGIN_MODULES``)."""
from recbole_kd.models import bert4rec, mf, sasrec  # noqa: F401
from recbole_kd.models.sasrec import WindowedSequentialModel  # noqa: F401  (base class for new students)
