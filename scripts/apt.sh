# Sourced by the scripts: installs Debian packages the tests and benchmarks need.

# Installs Debian package $1 (refreshing the package lists once if it is not known).
apt_install() {
    local sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null \
        || { $sudo apt-get update -q >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null; }
}

# Stops a system-wide service a package may have started (the tests start their own).
stop_service() {
    local sudo=""
    [[ "$(id -u)" == 0 ]] || sudo="sudo"
    if command -v service >/dev/null; then
        $sudo service "$1" stop >/dev/null 2>&1 || true
    fi
}
