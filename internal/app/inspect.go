package app

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/tern-iot/tern/internal/trust"
)

// Info is what `tern app inspect` shows: the manifest, the layers with their sizes and
// who signed the package.
type Info struct {
	File       string          `json:"file"`
	Size       int64           `json:"size"`
	App        Manifest        `json:"app"`
	Image      Image           `json:"image,omitzero"`
	OS         *OSImage        `json:"os,omitempty"`
	Signatures []SignatureInfo `json:"signatures"`
}

// SignatureInfo names one signature; Trusted and Valid are set only when inspect was
// given public keys to judge it by.
type SignatureInfo struct {
	KeyID   string `json:"keyid"`
	Trusted *bool  `json:"trusted,omitempty"`
}

// InspectFile reads the package at path (checking its structure and every digest) and
// describes it. With keys, each signature is marked trusted or not.
func InspectFile(path string, keys []trust.PublicKey) (*Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	p, err := Read(f, ReadOptions{SkipSignatures: true}, Discard)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	info := &Info{File: path, Size: fi.Size(), App: p.Manifest.App, Image: p.Manifest.Image, OS: p.Manifest.OS}
	for _, s := range p.Envelope.Signatures {
		si := SignatureInfo{KeyID: s.KeyID}
		if keys != nil {
			_, err := (&trust.Envelope{PayloadType: p.Envelope.PayloadType, Payload: p.Envelope.Payload, Signatures: []trust.Signature{s}}).Verify(PayloadType, keys, 1)
			ok := err == nil
			si.Trusted = &ok
		}
		info.Signatures = append(info.Signatures, si)
	}
	return info, nil
}

// WriteText prints info for people.
func (info *Info) WriteText(w io.Writer) error {
	a := info.App
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Package:\t%s (%s)\n", info.File, humanBytes(info.Size))
	if o := info.OS; o != nil {
		fmt.Fprintf(tw, "OS:\t%s\nDevice types:\t%s\nImage:\t%s (%s)\nPayload:\t%s (%s, zstd)\nDowngrade:\t%v\n",
			o.Version, strings.Join(o.DeviceTypes, ", "), shortDigest(o.Image.Digest), humanBytes(o.Image.Size),
			shortDigest(o.Payload.Digest), humanBytes(o.Payload.Size), o.AllowDowngrade)
		tw.Flush()
		info.writeSignatures(w)
		return nil
	}
	fmt.Fprintf(tw, "App:\t%s %s\n", a.Name, a.Version)
	fmt.Fprintf(tw, "Platform:\t%s\n", info.Image.Platform)
	fmt.Fprintf(tw, "Command:\t%s\n", strings.Join(quoteAll(a.Command), " "))
	if a.User != "" {
		fmt.Fprintf(tw, "User:\t%s\n", a.User)
	}
	if a.WorkDir != "" {
		fmt.Fprintf(tw, "Workdir:\t%s\n", a.WorkDir)
	}
	fmt.Fprintf(tw, "Restart:\t%s (stop timeout %s)\n", a.Restart, a.StopTimeout)
	if h := a.Health; h != nil {
		fmt.Fprintf(tw, "Health:\t%s every %s, timeout %s, %d retries\n", h.probe(), h.Interval, h.Timeout, h.Retries)
	}
	fmt.Fprintf(tw, "Probation:\t%s\n", a.Probation)
	fmt.Fprintf(tw, "Boot:\t%v", a.Boot)
	if len(a.After) > 0 {
		fmt.Fprintf(tw, " (after %s)", strings.Join(a.After, ", "))
	}
	fmt.Fprintln(tw)
	c := a.Capabilities
	fmt.Fprintf(tw, "Network:\t%s\n", c.Network.EffectiveMode())
	fmt.Fprintf(tw, "Devices:\t%s\n", listOrNone(c.Devices))
	fmt.Fprintf(tw, "Secrets:\t%s\n", listOrNone(c.Secrets))
	fmt.Fprintf(tw, "Linux caps:\t%s\n", listOrNone(c.Linux))
	for _, v := range a.Volumes {
		fmt.Fprintf(tw, "Volume:\t%s at %s (%s)\n", v.Name, v.Path, v.Size)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "Layers:\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "  DIGEST\tSIZE\tMEDIA TYPE\n")
	for _, l := range info.Image.Layers {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", shortDigest(l.Digest), humanBytes(l.Size), l.MediaType)
	}
	tw.Flush()
	info.writeSignatures(w)
	return nil
}

func (info *Info) writeSignatures(w io.Writer) {
	fmt.Fprintf(w, "Signatures:\n")
	for _, s := range info.Signatures {
		mark := ""
		if s.Trusted != nil {
			mark = "  untrusted"
			if *s.Trusted {
				mark = "  trusted"
			}
		}
		fmt.Fprintf(w, "  key %s%s\n", trust.ShortID(s.KeyID), mark)
	}
}

func (h *Health) probe() string {
	switch {
	case h.HTTP != nil:
		return fmt.Sprintf("http :%d%s", h.HTTP.Port, h.HTTP.Path)
	case h.TCP != 0:
		return fmt.Sprintf("tcp :%d", h.TCP)
	}
	return "exec " + strings.Join(h.Exec, " ")
}

func quoteAll(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t\"'") || a == "" {
			a = fmt.Sprintf("%q", a)
		}
		out[i] = a
	}
	return out
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}

func shortDigest(d string) string {
	if len(d) > 19 {
		return d[:19]
	}
	return d
}

// humanBytes prints n in binary units.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
