# Copyright (c) monai-medt contributors
# Licensed under the Apache License, Version 2.0 (the "License"); see the LICENSE file.
"""
MONAI Label glue: tasks that serve the MedT bundles (automatic, click-guided and MC-dropout scoring) from local
bundle folders. Needs ``monailabel`` (the ``label`` extra, installed in its own environment by
``scripts/setup_label_env.sh``); ``stage_bundles`` needs nothing beyond the standard library.
"""

from __future__ import annotations

from .bundles import stage_bundles
