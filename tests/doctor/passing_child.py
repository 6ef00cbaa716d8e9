"""A self-test child that reports a sound result for any type without running an engine:
for the install's decision logic only, which must not compile llama.cpp in a test."""

import json
import sys

print(json.dumps({"type": sys.argv[1], "finite": True, "sequence": [1, 2], "argmax": [2, 3], "agreement": 1.0,
                  "decode_tok_s": 1.0, "system_info": "CPU : test child"}))
