#!/usr/bin/env bash
# Refresh the KaTeX copy that the documentation serves itself (docs/vendor/katex/).
#
# The site typesets math with KaTeX from its own files, so pages work offline and nothing is
# fetched from a CDN. The files are committed; run this only to change the KaTeX version:
#     scripts/vendor_katex.sh [VERSION]        # needs npm (the npm registry), default below
# Only what the pages use is kept: katex.min.js, katex.min.css, contrib/auto-render.min.js and
# the woff2 fonts (every browser that runs the site reads woff2; the CSS is rewritten to list
# only those, so no request ever goes to a missing .woff/.ttf file).
set -euo pipefail
VERSION="${1:-0.16.22}"
cd "$(dirname "$0")/.."
DEST=docs/vendor/katex
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
(cd "$TMP" && npm pack --silent "katex@${VERSION}" >/dev/null && tar xzf "katex-${VERSION}.tgz")
PKG="$TMP/package"
rm -rf "$DEST"
mkdir -p "$DEST/contrib" "$DEST/fonts"
cp "$PKG/dist/katex.min.js" "$DEST/"
cp "$PKG/dist/contrib/auto-render.min.js" "$DEST/contrib/"
cp "$PKG/dist/fonts/"*.woff2 "$DEST/fonts/"
cp "$PKG/LICENSE" "$DEST/LICENSE"
sed -E 's/,url\(fonts\/[A-Za-z0-9_-]+\.woff\) format\("woff"\),url\(fonts\/[A-Za-z0-9_-]+\.ttf\) format\("truetype"\)//g' \
    "$PKG/dist/katex.min.css" > "$DEST/katex.min.css"
if grep -qE '\.(woff|ttf)\)' "$DEST/katex.min.css"; then
    echo "vendor_katex.sh: could not strip the .woff/.ttf fallbacks from katex.min.css" >&2
    exit 1
fi
echo "$VERSION" > "$DEST/VERSION"
echo "KaTeX $VERSION copied to $DEST ($(du -sh "$DEST" | cut -f1))"
