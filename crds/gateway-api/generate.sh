#!/bin/sh
# Regenerates crds/src/gateway/*.rs from the upstream Gateway API CRDs
# vendored beside this script (kopium: `cargo install kopium --version 0.24.1`).
# The test `generated_types_keep_every_field` (crds/src/gateway/tests.rs)
# fails when the types no longer hold every field of these CRDs.
#
# To move to another Gateway API release: put its standard CRDs for
# gatewayclasses, gateways, httproutes and referencegrants in a directory
# named after the release, set VERSION, run this script, run the tests.
set -eu
VERSION=v1.5.1
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../src/gateway"
gen() { # kind, API version
    kopium -f "$here/$VERSION/gateway.networking.k8s.io_$1.yaml" --api-version "$2" \
        --derive PartialEq --docs \
        | sed "s|^// kopium command: .*|// kopium command: crds/gateway-api/generate.sh ($VERSION, $1, $2)|" \
        > "$out/$1.rs"
}
gen gatewayclasses v1
gen gateways v1
gen httproutes v1
gen referencegrants v1beta1
# As `cargo fmt --all` leaves them, so a regeneration shows only real changes.
rustfmt --edition 2024 "$out"/gatewayclasses.rs "$out"/gateways.rs "$out"/httproutes.rs "$out"/referencegrants.rs
