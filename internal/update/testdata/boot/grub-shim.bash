# Runs the logic of a GRUB configuration (docs/boot/grub.cfg) under bash, with
# GRUB's commands replaced by functions backed by a plain KEY=VALUE environment
# file standing for the grubenv block. Bash, not sh: GRUB's "set name=value" needs a
# function named set, which only bash (outside POSIX mode) lets shadow a builtin.
#
#   bash grub-shim.bash CONFIG ENVFILE OUTFILE
#
# OUTFILE gets one line per event: "save_env NAMES", "linux ARGS", "boot" followed
# by "bootargs=VALUE" (the kernel command line), or "reset" (reboot).
# TERN_SHIM_FAIL_SLOT=x makes linux fail while tern_slot is x (a missing kernel).

__config=$1
__envfile=$2
__out=$3

__name() {
	case $1 in
	'' | [0-9]* | *[!A-Za-z0-9_]*)
		echo "grub-shim: variable name not usable in bash: $1" >&2
		exit 2
		;;
	esac
}

# __readenv: the file's lines, NAME=VALUE, into the associative array __file.
declare -A __file
__readenv() {
	__file=()
	local line
	while IFS= read -r line || [[ -n $line ]]; do
		[[ -z $line || $line == '#'* ]] && continue
		__file[${line%%=*}]=${line#*=}
	done <"$__envfile"
}

# set NAME=VALUE (GRUB's set; GRUB only assigns with it).
set() {
	if [[ $# -ne 1 || $1 != *=* ]]; then
		echo "grub-shim: set $* not shimmed" >&2
		exit 2
	fi
	__name "${1%%=*}"
	eval "${1%%=*}=\${1#*=}"
}


# load_env [--file F] [--skip-sig] [NAME...]: only the names given, when some are.
load_env() {
	local names=() n
	while [[ $# -gt 0 ]]; do
		case $1 in
		--file | -f) shift 2 ;;
		--skip-sig | -s) shift ;;
		*) names+=("$1"); shift ;;
		esac
	done
	__readenv
	if [[ ${#names[@]} -eq 0 ]]; then
		names=("${!__file[@]}")
	fi
	for n in "${names[@]}"; do
		if [[ -v __file[$n] ]]; then
			__name "$n"
			eval "$n=\${__file[\$n]}"
		fi
	done
}

# save_env [--file F] NAME...: set names are written, unset ones deleted (as
# GRUB's save_env does); other variables in the file stay.
save_env() {
	local names=() n k
	while [[ $# -gt 0 ]]; do
		case $1 in
		--file | -f) shift 2 ;;
		*) names+=("$1"); shift ;;
		esac
	done
	__readenv
	for n in "${names[@]}"; do
		__name "$n"
		if [[ -v $n ]]; then
			__file[$n]=${!n}
		else
			builtin unset "__file[$n]"
		fi
	done
	: >"$__envfile.new"
	for k in "${!__file[@]}"; do
		printf '%s=%s\n' "$k" "${__file[$k]}" >>"$__envfile.new"
	done
	mv "$__envfile.new" "$__envfile"
	echo "save_env ${names[*]}" >>"$__out"
}

insmod() { :; }
search() { :; }
sleep() { :; }

__cmdline=
linux() {
	echo "linux $*" >>"$__out"
	if [[ -n ${TERN_SHIM_FAIL_SLOT-} && ${tern_slot-} == "$TERN_SHIM_FAIL_SLOT" ]]; then
		return 1
	fi
	shift
	__cmdline="$*"
	return 0
}
initrd() { :; }

boot() {
	echo boot >>"$__out"
	printf 'bootargs=%s\n' "$__cmdline" >>"$__out"
	exit 0
}

reboot() {
	echo reset >>"$__out"
	exit 0
}

source "$__config"
echo "grub-shim: configuration ended without booting or rebooting" >&2
exit 3
