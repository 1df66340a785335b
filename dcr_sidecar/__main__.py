import sys

from dcr_sidecar.cli import main

sys.exit(main())
