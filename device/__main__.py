"""``python -m morphbox.device``: run the box's service (:mod:`morphbox.device.main`)."""

import sys

from morphbox.device.main import main

sys.exit(main())
