#!/bin/sh
# Refreshes the page's vendored libraries (`make web-vendor`): the pinned versions
# below, fetched with `npm pack` from the npm registry (which checks each tarball's
# integrity), copied here with their licences, and recorded in MANIFEST.txt with the
# sha256 of every file; tests/web/test_route.py holds the files to those sums. It says
# when the registry has a newer version: to move to it, change the pin and run this.
set -eu

MARKDOWN_IT=15.0.3
HIGHLIGHT_JS=11.12.0
# highlight.js grammars the page registers (client/web/markdown.js imports each one).
LANGUAGES="bash c cpp css diff go java javascript json markdown python rust shell sql typescript xml yaml"
# The server's /docs page (server/openapi.py), not the chat page's.
SWAGGER_UI=5.35.0

vendor=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

unpack() { # package@version -> directory of its unpacked tarball
    mkdir -p "$work/$1"
    (cd "$work/$1" && npm pack --silent "$1" >/dev/null && tar -xzf ./*.tgz)
    echo "$work/$1/package"
}

newer() { # package version: a line when the registry's latest differs from the pin
    latest=$(npm view "$1" version)
    [ "$latest" = "$2" ] || echo "note: $1 $latest is out (pinned: $2)" >&2
}

rm -f "$vendor"/*.js "$vendor"/*.css "$vendor"/*.txt
md=$(unpack "markdown-it@$MARKDOWN_IT")
cp "$md/dist/browser/markdown-it.esm.min.mjs" "$vendor/markdown-it.min.js"
cp "$md/LICENSE" "$vendor/markdown-it.LICENSE.txt"
hl=$(unpack "@highlightjs/cdn-assets@$HIGHLIGHT_JS")
cp "$hl/es/core.min.js" "$vendor/highlight.min.js"
for language in $LANGUAGES; do
    cp "$hl/es/languages/$language.min.js" "$vendor/highlight-$language.min.js"
done
cp "$hl/styles/github-dark.min.css" "$vendor/highlight-github-dark.min.css"
cp "$hl/LICENSE" "$vendor/highlight.js.LICENSE.txt"
sw=$(unpack "swagger-ui-dist@$SWAGGER_UI")
cp "$sw/swagger-ui-bundle.js" "$sw/swagger-ui.css" "$vendor/"
cp "$sw/LICENSE" "$vendor/swagger-ui.LICENSE.txt"
cp "$sw/NOTICE" "$vendor/swagger-ui.NOTICE.txt"
# The notices of the libraries built into the bundle.
cp "$sw/swagger-ui-bundle.js.LICENSE.txt" "$vendor/swagger-ui-bundle.js.LICENSE.txt"

cd "$vendor"
{
    echo "# Written by refresh.sh: package version, then sha256 and file as sha256sum writes them."
    echo "markdown-it $MARKDOWN_IT"
    echo "@highlightjs/cdn-assets $HIGHLIGHT_JS"
    echo "swagger-ui-dist $SWAGGER_UI"
    sha256sum markdown-it.* highlight*.* swagger-ui*.*
} >MANIFEST.txt
newer markdown-it "$MARKDOWN_IT"
newer @highlightjs/cdn-assets "$HIGHLIGHT_JS"
newer swagger-ui-dist "$SWAGGER_UI"
