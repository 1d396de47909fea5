#!/bin/sh
# The app the example's extensions were detected for: it needs curl to build
# and jq to run.
curl --version | head -1
echo '{"hello": "world"}' | jq -r .hello
