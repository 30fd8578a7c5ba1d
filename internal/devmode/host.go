package devmode

import (
	"os"
	"strconv"
	"strings"
)

// HostModel reads the hardware model: the device tree's model on boards,
// DMI's product name on PCs, "" when neither says.
func HostModel() string {
	for _, p := range []string{"/proc/device-tree/model", "/sys/firmware/devicetree/base/model", "/sys/class/dmi/id/product_name"} {
		if b, err := os.ReadFile(p); err == nil {
			if s := strings.TrimSpace(strings.TrimRight(string(b), "\x00")); s != "" {
				return s
			}
		}
	}
	return ""
}

// HostOS reads PRETTY_NAME from /etc/os-release.
func HostOS() string {
	b, err := os.ReadFile("/etc/os-release")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "PRETTY_NAME="); ok {
			if s, err := strconv.Unquote(v); err == nil {
				return s
			}
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}
