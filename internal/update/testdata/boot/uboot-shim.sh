# Runs a U-Boot boot script (docs/boot/boot.cmd) under POSIX sh, with U-Boot's
# commands replaced by functions backed by a plain KEY=VALUE environment file.
#
#   sh uboot-shim.sh SCRIPT ENVFILE OUTFILE
#
# ENVFILE is U-Boot's stored environment: read at the start (the environment U-Boot
# loads), rewritten by saveenv only. OUTFILE gets one line per event: "saveenv",
# "load ARGS", "boot CMD ARGS" followed by "bootargs=VALUE", or "reset".
# TERN_SHIM_FAIL_SLOT=x makes load fail while tern_slot is x (a slot whose kernel
# is missing). Environment variable names must be valid sh names.

__script=$1
__envfile=$2
__out=$3
__vars=

__known() {
	case " $__vars " in
	*" $1 "*) ;;
	*) __vars="$__vars $1" ;;
	esac
}

__name() {
	case $1 in
	'' | [0-9]* | *[!A-Za-z0-9_]*)
		echo "uboot-shim: variable name not usable in sh: $1" >&2
		exit 2
		;;
	esac
}

while IFS= read -r __line || [ -n "$__line" ]; do
	case $__line in
	'' | '#'*) continue ;;
	esac
	__k=${__line%%=*}
	__v=${__line#*=}
	__name "$__k"
	eval "$__k=\$__v"
	__known "$__k"
done <"$__envfile"

# setenv NAME [VALUE...]: the words joined by spaces; no value deletes NAME.
setenv() {
	__name "$1"
	__n=$1
	shift
	if [ $# -eq 0 ]; then
		unset "$__n"
	else
		eval "$__n=\$*"
	fi
	__known "$__n"
}

# saveenv: store the whole environment, atomically.
saveenv() {
	: >"$__envfile.new"
	for __n in $__vars; do
		eval "__isset=\${$__n+x}"
		if [ "$__isset" = x ]; then
			eval "printf '%s=%s\n' \"\$__n\" \"\$$__n\"" >>"$__envfile.new"
		fi
	done
	mv "$__envfile.new" "$__envfile"
	echo saveenv >>"$__out"
}

printenv() {
	if [ $# -eq 0 ]; then
		set -- $__vars
	fi
	for __n in "$@"; do
		eval "__isset=\${$__n+x}"
		if [ "$__isset" = x ]; then
			eval "printf '%s=%s\n' \"\$__n\" \"\$$__n\""
		fi
	done
}

env() {
	case $1 in
	print) shift; printenv "$@" ;;
	set) shift; setenv "$@" ;;
	save) saveenv ;;
	*) echo "uboot-shim: env $1 not shimmed" >&2; exit 2 ;;
	esac
}

__load() {
	echo "load $*" >>"$__out"
	if [ -n "${TERN_SHIM_FAIL_SLOT-}" ] && [ "x${tern_slot-}" = "x$TERN_SHIM_FAIL_SLOT" ]; then
		return 1
	fi
	return 0
}
load() { __load "$@"; }
fatload() { __load "$@"; }
ext4load() { __load "$@"; }

# The boot commands do not return when they boot.
__boot() {
	echo "boot $*" >>"$__out"
	printf 'bootargs=%s\n' "${bootargs-}" >>"$__out"
	exit 0
}
boot() { __boot boot "$@"; }
bootz() { __boot bootz "$@"; }
booti() { __boot booti "$@"; }
bootm() { __boot bootm "$@"; }

reset() {
	echo reset >>"$__out"
	exit 0
}

. "$__script"
echo "uboot-shim: script ended without booting or resetting" >&2
exit 3
