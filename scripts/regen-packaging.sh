#!/usr/bin/env bash
# Regenerates the man pages and shell completions the Debian package ships
# (packaging/man/, packaging/completions/) from the command-line definitions,
# through the binary itself. Run it after changing a command or its help, and
# commit the result: tests/package.rs fails until the copies match.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet --bin walcompactd
bin=target/debug/walcompactd

rm -rf packaging/man
"$bin" man --dir packaging/man >/dev/null
mkdir -p packaging/completions
"$bin" completions bash >packaging/completions/walcompactd.bash
"$bin" completions zsh >packaging/completions/_walcompactd
"$bin" completions fish >packaging/completions/walcompactd.fish
echo "regenerated packaging/man/ ($(ls packaging/man | wc -l) pages) and packaging/completions/"
