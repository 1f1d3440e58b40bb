"""No deprecated transformers or torch API on the editing path.

pyproject's filterwarnings makes a deprecation warning attributed to an app module an error.
transformers attributes the warning of a deprecated forward argument to torch's Module.__call__
(the caller of the decorated forward) and reports some deprecations through its logger only,
so the key statistics and an edit are also run here with every deprecation warning an error and
the transformers logger watched.
"""

import logging
import warnings

import pytest

from app.editing.editor import Editor
from app.editing.reading import generate
from app.editing.stats import collect_key_stats
from tests.utils.editing import FACTS, TEMPLATES, tiny_lm, tiny_settings


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_an_edit_uses_no_deprecated_api(arch):
    lm = tiny_lm(arch)
    s = tiny_settings(max_steps=3)
    logger = logging.getLogger("transformers")
    records = _Records()
    logger.addHandler(records)
    logging.Logger.warning_once.cache_clear()  # transformers says some things once per process
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            warnings.simplefilter("error", FutureWarning)
            stats = collect_key_stats(lm, list(s.layers), None, tokens=1000, progress=False)  # generated text
            editor = Editor(lm, s, stats, templates=TEMPLATES)
            editor.apply(FACTS, batch_id=1)
            generate(editor.lm, "The mother tongue of Danielle Darrieux is", max_new_tokens=3)
            editor.remove_batch(1)
    finally:
        logger.removeHandler(records)
    assert not [m for m in records.messages if "deprecat" in m.lower()]


def test_deprecations_raised_from_app_modules_are_errors():
    """The pyproject filter as written (a regex on the warning's module) does catch app code."""

    def warn_from(module: str):
        exec(
            compile("import warnings\nwarnings.warn('old API', DeprecationWarning)", "<code>", "exec"),
            {"__name__": module},
        )

    with pytest.raises(DeprecationWarning):
        warn_from("app.editing.somewhere")
    with pytest.raises(DeprecationWarning):
        warn_from("app")
    with pytest.warns(DeprecationWarning):  # reported, not an error
        warn_from("application")
