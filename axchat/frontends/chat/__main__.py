import sys

from axchat.frontends.chat.main import main

sys.exit(main())
