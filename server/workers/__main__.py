"""A worker process of ``warpserve serve --workers N`` (started by its supervisor)."""

import sys

from warpserve.server.workers.worker import main

sys.exit(main())
