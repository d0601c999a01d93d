#!/usr/bin/env bash
# The official AsyncAPI JSON Schemas (npm @asyncapi/specs) and parser (@asyncapi/parser),
# which the tests of `eventbus asyncapi` validate its documents with. Installs both, pinned,
# into ${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/asyncapi the first time (needs npm and
# the npm registry), then only prints:
#
#   scripts/asyncapi-specs.sh          the bundled single-file AsyncAPI 3.0.0 JSON Schema
#   scripts/asyncapi-specs.sh parser   the node_modules folder holding @asyncapi/parser
#
# Idempotent, and safe to run from several processes at once (flock).
set -euo pipefail
SPECS_VERSION=6.11.1
PARSER_VERSION=3.6.6
dir="${EVENTBUS_CACHE:-$HOME/.cache/eventbus}/asyncapi"
schema="$dir/node_modules/@asyncapi/specs/schemas/3.0.0.json"
parser="$dir/node_modules/@asyncapi/parser/package.json"
stamp="$dir/.installed-specs-$SPECS_VERSION-parser-$PARSER_VERSION"

mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ ! -f "$stamp" ] || [ ! -f "$schema" ] || [ ! -f "$parser" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "asyncapi-specs.sh: npm is not installed (Node.js 18 or later is needed)" >&2
    exit 1
  fi
  log="$dir/npm-install.log"
  # --ignore-scripts: nothing of these packages runs at install time
  if ! npm install --prefix "$dir" --save-exact --no-audit --no-fund --ignore-scripts \
      "@asyncapi/specs@$SPECS_VERSION" "@asyncapi/parser@$PARSER_VERSION" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "asyncapi-specs.sh: npm install failed (full log: $log)" >&2
    exit 1
  fi
  for file in "$schema" "$parser"; do
    if [ ! -f "$file" ]; then
      echo "asyncapi-specs.sh: $file is missing after npm install" >&2
      exit 1
    fi
  done
  touch "$stamp"
fi
case "${1:-schema}" in
  schema) echo "$schema" ;;
  parser) echo "$dir/node_modules" ;;
  *) echo "usage: $0 [schema|parser]" >&2; exit 2 ;;
esac
