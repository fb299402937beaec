"""Settings for a developer machine: debug on, every provider pointed at the local sandbox."""

from settings.base import *  # noqa: F403
from settings.base import env_bool

DEBUG = env_bool("DJANGO_DEBUG", True)
