#!/usr/bin/env bash
# Installs loramerge for the current user (or under PREFIX): the runnable jar and its launcher,
# bash completion and the man page, both generated from the command definitions by the jar itself.
#
#   scripts/install/install.sh [PREFIX]        default PREFIX: ~/.local
#
#   PREFIX/lib/loramerge/{loramerge, loramerge-cli.jar, loramerge-cli.jsa (class-data archive, make-cds.sh)}
#   PREFIX/bin/loramerge -> ../lib/loramerge/loramerge
#   PREFIX/share/bash-completion/completions/loramerge      (bash-completion loads it on first use)
#   PREFIX/share/man/man1/loramerge.1                        (man loramerge, with PREFIX/share/man on MANPATH)
#
# Builds target/loramerge-cli.jar first if it is missing. Zsh users: `autoload -U bashcompinit &&
# bashcompinit && source PREFIX/share/bash-completion/completions/loramerge`.
set -euo pipefail
case "${1:-}" in
-h|--help) sed -n 2,14p "$0"; exit 0 ;;
-*) echo "install.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
prefix=${1:-$HOME/.local}
jar=$root/target/loramerge-cli.jar
if [[ ! -f $jar ]]; then
    (cd "$root" && mvn -q -B package -DskipTests)
fi
java=${JAVA_HOME:+$JAVA_HOME/bin/}java
mkdir -p "$prefix/lib/loramerge" "$prefix/bin" "$prefix/share/bash-completion/completions" "$prefix/share/man/man1"
install -m 0644 "$jar" "$prefix/lib/loramerge/loramerge-cli.jar"
install -m 0755 "$root/loramerge" "$prefix/lib/loramerge/loramerge"
ln -sfn ../lib/loramerge/loramerge "$prefix/bin/loramerge"
# the class-data archive of the installed jar, for a faster start (make-cds.sh); without it the launcher still runs
JAVA_HOME=${JAVA_HOME:-} "$root/scripts/install/make-cds.sh" "$prefix/lib/loramerge/loramerge-cli.jar" \
    || echo "install.sh: no class-data archive (see above); loramerge runs without it, starting a little slower" >&2
"$java" -jar "$jar" generate-completion > "$prefix/share/bash-completion/completions/loramerge"
"$java" -jar "$jar" generate-manpage > "$prefix/share/man/man1/loramerge.1"
echo "installed loramerge $("$java" -jar "$jar" --version | cut -d' ' -f2) under $prefix"
case ":$PATH:" in
*":$prefix/bin:"*) ;;
*) echo "add $prefix/bin to PATH to run it as loramerge" ;;
esac
