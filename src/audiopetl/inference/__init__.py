"""After the study: a trained model put to use. It rebuilds a model from a finished run folder
(verified, from the run's own record and base weights) or from an exported folder, scores new
recordings with the run's own front end in windows of the training length (``predict``), and
writes folders that plain transformers and peft load (``export``).

Imports: core, data, features, models, training and study (a run's settings resolved from its
record); only the CLI and ``audiopetl.load_model`` import it.
"""

from audiopetl.inference.model import Trained, load_model

__all__ = ["Trained", "load_model"]
