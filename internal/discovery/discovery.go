// Package discovery finds Tern devices in developer mode on the LAN: DNS-SD over
// multicast DNS (RFC 6762/6763), service type _tern._tcp, with the device's id,
// model and versions in its TXT record.
//
// It uses pion/mdns/v2, which (from v2.2) answers PTR, SRV, TXT and A questions
// for registered service instances and browses for them, so no hand-made
// responder is needed. Only IPv4 multicast is used: a device's LAN API address
// is what a developer types, and IPv4 is what every LAN has.
package discovery

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pion/logging"
	"github.com/pion/mdns/v2"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/tern-iot/tern/internal/devmode"
)

// ServiceType is the DNS-SD service type of a device's LAN API.
const ServiceType = "_tern._tcp"

// TXT record keys. Values are each well under DNS-SD's 255-byte limit (apps is
// cut to fit).
const (
	txtID          = "id"
	txtName        = "name"
	txtModel       = "model"
	txtOS          = "os"
	txtArch        = "arch"
	txtTernd       = "ternd"
	txtApps        = "apps"
	txtFingerprint = "fp"
	maxTXTValue    = 200
)

// Announcement is a running announcement of a device.
type Announcement struct {
	conn     *mdns.Conn
	instance string
	once     sync.Once
}

// Advertise announces the device's LAN API on port until Close (or until ctx
// ends). It answers on every up, multicast-capable, non-loopback interface.
func Advertise(ctx context.Context, log *slog.Logger, info devmode.DeviceInfo, port int) (*Announcement, error) {
	pc, err := listenMDNS()
	if err != nil {
		return nil, err
	}
	host := "tern-" + info.ID + ".local"
	instance := info.Name + "-" + info.ID
	if len(instance) > 63 {
		instance = instance[len(instance)-63:]
	}
	conn, err := mdns.NewServer(pc, nil,
		mdns.WithName("ternd"),
		mdns.WithLoggerFactory(slogFactory{log}),
		mdns.WithLocalNames(host),
		mdns.WithService(mdns.ServiceInstance{
			Instance: instance, Service: ServiceType, Domain: "local",
			Host: host + ".", Port: uint16(port), Text: txtOf(info),
		}),
	)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("mdns: %w", err)
	}
	log.Info("developer mode: announcing", "service", ServiceType, "instance", instance, "host", host, "port", port)
	a := &Announcement{conn: conn, instance: instance}
	context.AfterFunc(ctx, func() { a.Close() })
	return a, nil
}

// Update replaces the TXT record (and announces it).
func (a *Announcement) Update(info devmode.DeviceInfo) error {
	return a.conn.UpdateTXT(a.instance, ServiceType, txtOf(info))
}

// Close stops answering.
func (a *Announcement) Close() error {
	var err error
	a.once.Do(func() { err = a.conn.Close() })
	return err
}

// Browse listens for devices for the whole timeout (asking again every 500ms:
// a multicast answer may be lost) and returns those that answered, sorted by
// name. Each has the address it answered from and the port of its LAN API.
func Browse(ctx context.Context, log *slog.Logger, timeout time.Duration) ([]devmode.DeviceInfo, error) {
	pc, err := listenMDNS()
	if err != nil {
		return nil, err
	}
	conn, err := mdns.NewServer(pc, nil,
		mdns.WithName("tern"),
		mdns.WithLoggerFactory(slogFactory{log}),
		mdns.WithQueryInterval(500*time.Millisecond),
	)
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("mdns: %w", err)
	}
	defer conn.Close()
	var mu sync.Mutex
	found := map[string]devmode.DeviceInfo{}
	conn.OnServiceDiscovered(func(ev mdns.ServiceEvent) {
		d := infoOf(ev.Instance.Text)
		d.Instance = ev.Instance.Instance
		d.Address = netip.AddrPortFrom(ev.Addr.Unmap().WithZone(""), ev.Instance.Port).String()
		mu.Lock()
		found[d.Instance] = d
		mu.Unlock()
	})
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := conn.Browse(ctx, ServiceType); err != nil {
		return nil, fmt.Errorf("mdns browse: %w", err)
	}
	<-ctx.Done()
	mu.Lock()
	defer mu.Unlock()
	out := make([]devmode.DeviceInfo, 0, len(found))
	for _, d := range found {
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b devmode.DeviceInfo) int { return strings.Compare(a.Name+a.ID, b.Name+b.ID) })
	return out, nil
}

// listenMDNS binds the mDNS port with address and port reuse, so that ternd,
// tern and a system responder (avahi) share it, each receiving every datagram
// sent to the group.
func listenMDNS() (*ipv4.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:5353")
	if err != nil {
		return nil, fmt.Errorf("mdns: %w", err)
	}
	return ipv4.NewPacketConn(c), nil
}

func txtOf(info devmode.DeviceInfo) []mdns.TXTEntry {
	var out []mdns.TXTEntry
	add := func(k, v string) {
		if v == "" {
			return
		}
		if len(v) > maxTXTValue {
			v = v[:maxTXTValue-3] + "..."
		}
		out = append(out, mdns.NewTXTString(k, v))
	}
	add(txtID, info.ID)
	add(txtName, info.Name)
	add(txtModel, info.Model)
	add(txtOS, info.OS)
	add(txtArch, info.Arch)
	add(txtTernd, info.Ternd)
	add(txtApps, info.Apps)
	add(txtFingerprint, info.Fingerprint)
	return out
}

func infoOf(txt []mdns.TXTEntry) devmode.DeviceInfo {
	var d devmode.DeviceInfo
	for _, e := range txt {
		v := string(e.Value)
		switch e.Key {
		case txtID:
			d.ID = v
		case txtName:
			d.Name = v
		case txtModel:
			d.Model = v
		case txtOS:
			d.OS = v
		case txtArch:
			d.Arch = v
		case txtTernd:
			d.Ternd = v
		case txtApps:
			d.Apps = v
		case txtFingerprint:
			d.Fingerprint = v
		}
	}
	return d
}

// slogFactory sends pion's logs to slog: its chatter at debug level, its
// errors as warnings (a lost multicast packet is not an error of ours).
type slogFactory struct{ log *slog.Logger }

func (f slogFactory) NewLogger(scope string) logging.LeveledLogger {
	return slogLogger{f.log.With("component", "mdns/"+scope)}
}

type slogLogger struct{ log *slog.Logger }

func (l slogLogger) Trace(msg string)                  {}
func (l slogLogger) Tracef(string, ...any)             {}
func (l slogLogger) Debug(msg string)                  { l.log.Debug(msg) }
func (l slogLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l slogLogger) Info(msg string)                   { l.log.Debug(msg) }
func (l slogLogger) Infof(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l slogLogger) Warn(msg string)                   { l.log.Debug(msg) }
func (l slogLogger) Warnf(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l slogLogger) Error(msg string)                  { l.log.Warn(msg) }
func (l slogLogger) Errorf(format string, args ...any) { l.log.Warn(fmt.Sprintf(format, args...)) }
