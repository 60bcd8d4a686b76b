#!/usr/bin/env bash
# Build the iPhone runner on macOS: XcodeGen project -> Release build, development-signed -> .app + .ipa.
#
#   BENCH_TEAM_ID=ABCDE12345 ./runner/build.sh            # team id from developer.apple.com > Membership
#   BENCH_TEAM_ID=... BENCH_BUNDLE_ID=org.example.runner ./runner/build.sh
#
# Produces runner/build/BenchRunner.app and runner/build/BenchRunner.ipa; install with
#   bench devices install runner/build/BenchRunner.ipa
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
team="${BENCH_TEAM_ID:-${DEVELOPMENT_TEAM:-}}"
bundle_id="${BENCH_BUNDLE_ID:-org.bench.runner}"
configuration="${BENCH_CONFIGURATION:-Release}"
out="$here/build"

fail() { echo "build.sh: $*" >&2; exit 1; }

[[ "$(uname -s)" == "Darwin" ]] || fail "the runner needs macOS with Xcode 15+ to build (this is $(uname -s)); \
on Linux only the Swift sources are parsed by tests/test_runner_swift.py"
command -v xcodebuild >/dev/null || fail "xcodebuild not found: install Xcode and run 'sudo xcode-select -s /Applications/Xcode.app'"
command -v xcodegen >/dev/null || fail "xcodegen not found: 'brew install xcodegen'"
[[ -n "$team" ]] || fail "set BENCH_TEAM_ID to your Apple Developer team id (10 characters, e.g. ABCDE12345)"

cd "$here"
xcodegen generate --spec project.yml

derived="$out/DerivedData"
xcodebuild \
  -project BenchRunner.xcodeproj \
  -scheme BenchRunner \
  -configuration "$configuration" \
  -sdk iphoneos \
  -destination 'generic/platform=iOS' \
  -derivedDataPath "$derived" \
  -allowProvisioningUpdates \
  DEVELOPMENT_TEAM="$team" \
  PRODUCT_BUNDLE_IDENTIFIER="$bundle_id" \
  CODE_SIGN_STYLE=Automatic \
  build

app="$derived/Build/Products/$configuration-iphoneos/BenchRunner.app"
[[ -d "$app" ]] || fail "build finished but $app is missing"
rm -rf "$out/BenchRunner.app" "$out/Payload" "$out/BenchRunner.ipa"
cp -R "$app" "$out/BenchRunner.app"

# The harness needs get-task-allow = true: house_arrest vends the app's container (pushing models, pulling results)
# only to a debuggable app. Its *value* is checked: a dump that merely names the key (get-task-allow false, as an
# ad-hoc or App Store export has) is refused too.
entitlements=$(codesign -d --entitlements - --xml "$out/BenchRunner.app" 2>/dev/null) || entitlements=""
task_allow=$(printf '%s' "$entitlements" | plutil -extract get-task-allow raw -o - - 2>/dev/null) || task_allow=""
if [[ "$task_allow" != "true" ]]; then
  fail "BenchRunner.app is not development-signed (get-task-allow is '${task_allow:-absent}', must be true); use an Apple Development identity and a development profile"
fi
codesign --verify --strict "$out/BenchRunner.app" || fail "code signature does not verify"

mkdir -p "$out/Payload"
cp -R "$out/BenchRunner.app" "$out/Payload/"
(cd "$out" && /usr/bin/zip -qry BenchRunner.ipa Payload)
rm -rf "$out/Payload"

echo "built $out/BenchRunner.app and $out/BenchRunner.ipa ($bundle_id, team $team, $configuration)"
echo "install: bench devices install $out/BenchRunner.ipa"
