import sys

from axchat.cli import main

sys.exit(main())
