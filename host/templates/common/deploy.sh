#!/bin/sh
# Deploys {{name}} into a running host's plugin folder (the host config's [plugins] dir):
# the manifest first, the module last, each written beside its final name and renamed
# into place, so the host never loads a half-written file or a module without its
# manifest. The built module is {{module}}; the host needs it named {{name}}.wasm.
set -eu
dir=${1:?usage: ./deploy.sh PLUGIN_DIR, the [plugins] dir of the host config}
[ -d "$dir" ] || { echo "deploy.sh: $dir is not a folder: give the host config's [plugins] dir" >&2; exit 2; }
dir=$(cd "$dir" && pwd)
cd "$(dirname "$0")"
module="{{module_sh}}"
[ -f "$module" ] || { echo "deploy.sh: $module is missing: build it first ({{build}})" >&2; exit 2; }
cp {{name}}.toml "$dir/.{{name}}.toml.tmp" && mv "$dir/.{{name}}.toml.tmp" "$dir/{{name}}.toml"
cp "$module" "$dir/.{{name}}.wasm.tmp" && mv "$dir/.{{name}}.wasm.tmp" "$dir/{{name}}.wasm"
echo "deployed {{name}}.wasm and {{name}}.toml to $dir: the host loads it after its debounce (its log says \"plugin loaded\" or \"plugin reloaded\", or why it refused it)"
