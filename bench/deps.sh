#!/bin/sh
# Debian 12 packages the benchmark needs beyond tools/deps.sh (the list is
# there, beside the others). Does nothing when all are present.
exec sh "$(dirname "$0")/../tools/deps.sh" bench
