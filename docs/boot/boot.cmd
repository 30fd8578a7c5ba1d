# Tern A/B boot script for U-Boot: boot the slot in tern_slot, trying a new slot a
# limited number of times and falling back to the other slot when the agent did not
# commit it. See docs/bootloader.md; build with
#   mkimage -A arm64 -O linux -T script -C none -n "Tern boot" -d boot.cmd boot.scr
#
# Environment (the agent writes it with fw_setenv):
#   tern_slot          slot to boot, "a" or "b" (anything else boots "a")
#   upgrade_available  "1" while the slot in tern_slot is on trial
#   bootcount          boots of the trial slot so far
#   bootlimit          trial boots allowed, 1 to 8 (anything else counts as 1)
#
# Rules, identical in docs/boot/grub.cfg and in SimulateBoot (internal/update):
# during a trial, bootcount steps up by one and is saved before the kernel is
# loaded; once it passes bootlimit, tern_slot goes back to the other slot and the
# trial ends. Outside a trial nothing is written.
#
# Portability: this file uses only what U-Boot's hush and POSIX sh both accept
# (if/elif/else/fi, test, "${var}", setenv), so that Tern's tests run it unchanged
# under /bin/sh with U-Boot's commands stubbed. Counting is done in single-digit
# string steps rather than with setexpr: setexpr computes in hexadecimal while test
# -gt reads decimal, so a count of 10 ("a") would compare as 0 and never fall back.
# test always gets a non-empty word on both sides of = (the "x" prefix): an empty
# variable must not be able to drop an argument or pass for an operator.

if test "x${upgrade_available}" = "x1"; then
	if test "x${bootlimit}" = "x2"; then
		setenv bootlimit 2
	elif test "x${bootlimit}" = "x3"; then
		setenv bootlimit 3
	elif test "x${bootlimit}" = "x4"; then
		setenv bootlimit 4
	elif test "x${bootlimit}" = "x5"; then
		setenv bootlimit 5
	elif test "x${bootlimit}" = "x6"; then
		setenv bootlimit 6
	elif test "x${bootlimit}" = "x7"; then
		setenv bootlimit 7
	elif test "x${bootlimit}" = "x8"; then
		setenv bootlimit 8
	else
		setenv bootlimit 1
	fi

	if test "x${bootcount}" = "x"; then
		setenv bootcount 1
	elif test "x${bootcount}" = "x0"; then
		setenv bootcount 1
	elif test "x${bootcount}" = "x1"; then
		setenv bootcount 2
	elif test "x${bootcount}" = "x2"; then
		setenv bootcount 3
	elif test "x${bootcount}" = "x3"; then
		setenv bootcount 4
	elif test "x${bootcount}" = "x4"; then
		setenv bootcount 5
	elif test "x${bootcount}" = "x5"; then
		setenv bootcount 6
	elif test "x${bootcount}" = "x6"; then
		setenv bootcount 7
	elif test "x${bootcount}" = "x7"; then
		setenv bootcount 8
	elif test "x${bootcount}" = "x8"; then
		setenv bootcount 9
	else
		# Not a count this script wrote: take it as over any limit.
		setenv bootcount 9
	fi

	if test "${bootcount}" -gt "${bootlimit}"; then
		echo "tern: slot ${tern_slot} failed its trial, falling back"
		if test "x${tern_slot}" = "xb"; then
			setenv tern_slot a
		else
			setenv tern_slot b
		fi
		setenv upgrade_available 0
		setenv bootcount 0
	fi
	saveenv
fi

# Nothing below is saved: it only prepares this boot.
if test "x${tern_slot}" != "xb"; then
	setenv tern_slot a
fi
echo "tern: booting slot ${tern_slot}"

# ---------------------------------------------------------------------------
# BOARD-SPECIFIC: where each slot's kernel and root file system are. Adapt this
# block to the board; keep "tern.slot=${tern_slot}" on the kernel command line
# (the agent reads the booted slot there). This example: eMMC device 0, slot a on
# partition 2 and slot b on partition 3, each slot's root file system holding an
# arm64 kernel at /boot/Image and the device tree at /boot/dtb/${fdtfile}.
if test "x${tern_slot}" = "xb"; then
	setenv tern_part 3
else
	setenv tern_part 2
fi
setenv bootargs "console=${console} root=/dev/mmcblk0p${tern_part} rootwait ro tern.slot=${tern_slot}"
if load mmc 0:${tern_part} ${kernel_addr_r} /boot/Image; then
	load mmc 0:${tern_part} ${fdt_addr_r} /boot/dtb/${fdtfile}
	booti ${kernel_addr_r} - ${fdt_addr_r}
fi
# END BOARD-SPECIFIC
# ---------------------------------------------------------------------------

# Reached only when the slot could not be booted. During a trial the count is
# already saved, so the next boot moves on (and falls back once over the limit).
echo "tern: cannot boot slot ${tern_slot}, resetting"
reset
