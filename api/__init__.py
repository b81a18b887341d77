"""The STAC API application (stac-fastapi). Only composes catalog/ and encoders/."""

import logging as _logging


class _ConfiguredTitle(_logging.Filter):
    """stac-fastapi builds a module-level settings object from its own defaults when
    ``stac_fastapi.types.core`` is imported and warns that the title is the default one.
    embcat passes its configured title, description and id to the app and the landing page
    (api.app.create_app), so that import-time warning is dropped (only that one)."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using default values for")


_logging.getLogger("stac_fastapi.types.config").addFilter(_ConfiguredTitle())
