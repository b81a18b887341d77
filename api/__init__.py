"""The STAC API application (stac-fastapi). Only composes catalog/ and encoders/."""
