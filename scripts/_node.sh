# Sourced by scripts/test: the npm packages of package.json (buf, the Node.js gRPC client the
# tests call the server with) in node_modules, exactly as package-lock.json pins them.
# Reruns are quick: npm ci runs only when package-lock.json changed since the last install.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! command -v npm >/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test needs Node.js 18+ and npm: install them (Debian: apt-get install nodejs npm)" >&2
        exit 1
    fi
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
installed="$repo/node_modules/.installed-package-lock.json"
if ! cmp -s "$repo/package-lock.json" "$installed"; then
    (cd "$repo" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$repo/package-lock.json" "$installed"
fi
