"""Plugin models: importing this package registers them."""
from recbole_kd.models import bert4rec, mf, sasrec  # noqa: F401
from recbole_kd.models.sasrec import WindowedSequentialModel  # noqa: F401  (base class for new students)
from recbole_kd.models import distill  # noqa: F401  (KD-<student> entries; last: needs the students)
from recbole_kd.models import transfer  # noqa: F401  (Transfer-<student> entries)
