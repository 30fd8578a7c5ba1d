package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tern-iot/tern/internal/devmode"
)

// DefaultSocket is where ternd serves its local API.
const DefaultSocket = "/run/tern/ternd.sock"

// Client talks to a ternd's API.
type Client struct {
	hc   *http.Client
	base string
}

// NewClient connects to a device address: unix:///path/to.sock (the default
// socket if empty), or HOST[:PORT] for a device in developer mode on the LAN,
// reached with mutual TLS using this workstation's keys in ~/.config/tern/dev
// and the certificate pinned when it paired.
func NewClient(device string) (*Client, error) {
	if device == "" {
		device = "unix://" + DefaultSocket
	}
	if strings.HasPrefix(device, "/") {
		device = "unix://" + device // a socket path
	}
	if !strings.Contains(device, "://") || strings.HasPrefix(device, "tern://") || strings.HasPrefix(device, "https://") {
		dir, err := devmode.ConfigDir()
		if err != nil {
			return nil, err
		}
		ws, err := devmode.LoadWorkstation(dir)
		if err != nil {
			return nil, err
		}
		return NewLANClient(device, ws)
	}
	u, err := url.Parse(device)
	if err != nil {
		return nil, fmt.Errorf("device %q: %w", device, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}
		return &Client{hc: &http.Client{Transport: tr}, base: "http://ternd"}, nil
	}
	return nil, fmt.Errorf("device %q: want unix:///path/to/ternd.sock or HOST[:PORT]", device)
}

// NewLANClient connects to a paired device's LAN API at addr (HOST[:PORT]).
func NewLANClient(addr string, ws *devmode.Workstation) (*Client, error) {
	kd, err := ws.Known(addr)
	if err != nil {
		return nil, err
	}
	tr := &http.Transport{
		TLSClientConfig:     ws.ClientTLS(kd.Fingerprint),
		TLSHandshakeTimeout: 10 * time.Second,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:   false,
	}
	return &Client{hc: &http.Client{Transport: tr}, base: "https://" + kd.Address}, nil
}

// APIError is an error answer from ternd.
type APIError struct{ Problem }

func (e *APIError) Error() string {
	if e.Detail != "" {
		return e.Detail
	}
	return e.Title
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("ternd: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var p Problem
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&p) != nil || p.Title == "" {
			p = Problem{Title: resp.Status, Status: resp.StatusCode}
		}
		return &APIError{p}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// List returns every app's status.
func (c *Client) List(ctx context.Context) ([]AppStatus, error) {
	var out []AppStatus
	return out, c.do(ctx, http.MethodGet, "/v1/apps", nil, "", &out)
}

// Inspect returns an app's status and manifest.
func (c *Client) Inspect(ctx context.Context, name string) (AppStatus, error) {
	var out AppStatus
	return out, c.do(ctx, http.MethodGet, "/v1/apps/"+url.PathEscape(name), nil, "", &out)
}

// Install uploads packages: one is installed (or updates its app); several form
// one update transaction.
func (c *Client) Install(ctx context.Context, pkgs ...io.Reader) ([]AppStatus, error) {
	var out InstallResult
	if len(pkgs) == 1 {
		err := c.do(ctx, http.MethodPost, "/v1/apps", pkgs[0], MediaTypePackage, &out)
		return out.Apps, err
	}
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		for i, p := range pkgs {
			part, err := mw.CreateFormFile("package", fmt.Sprintf("%d.tern", i))
			if err == nil {
				_, err = io.Copy(part, p)
			}
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(mw.Close())
	}()
	err := c.do(ctx, http.MethodPost, "/v1/apps?packages="+strconv.Itoa(len(pkgs)), pr, mw.FormDataContentType(), &out)
	pr.Close()
	return out.Apps, err
}

// InstallOS uploads an OS package; the device writes it to its inactive slot and
// reboots into it.
func (c *Client) InstallOS(ctx context.Context, pkg io.Reader) (OSStatus, error) {
	var out OSStatus
	return out, c.do(ctx, http.MethodPost, "/v1/os", pkg, MediaTypePackage, &out)
}

// OSStatus reports the device's OS and slots.
func (c *Client) OSStatus(ctx context.Context) (OSStatus, error) {
	var out OSStatus
	return out, c.do(ctx, http.MethodGet, "/v1/os", nil, "", &out)
}

// Rollback returns an app to its previous version.
func (c *Client) Rollback(ctx context.Context, name string) ([]AppStatus, error) {
	var out InstallResult
	err := c.do(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(name)+"/rollback", nil, "", &out)
	return out.Apps, err
}

// Events returns the device's events after sequence number since.
func (c *Client) Events(ctx context.Context, since uint64) ([]Event, error) {
	var out []Event
	return out, c.do(ctx, http.MethodGet, "/v1/events?since="+strconv.FormatUint(since, 10), nil, "", &out)
}

// Verb runs start, stop or restart.
func (c *Client) Verb(ctx context.Context, name, verb string) (AppStatus, error) {
	var out AppStatus
	return out, c.do(ctx, http.MethodPost, "/v1/apps/"+url.PathEscape(name)+"/"+verb, nil, "", &out)
}

// Remove deletes an app.
func (c *Client) Remove(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/apps/"+url.PathEscape(name), nil, "", nil)
}

// Logs streams an app's log records to fn until the answer ends (or ctx does, when
// following).
func (c *Client) Logs(ctx context.Context, name string, tail int, follow bool, fn func(LogLine) error) error {
	q := url.Values{}
	if tail >= 0 {
		q.Set("tail", strconv.Itoa(tail))
	}
	if follow {
		q.Set("follow", "1")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/v1/apps/"+url.PathEscape(name)+"/logs?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("ternd: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var p Problem
		json.NewDecoder(resp.Body).Decode(&p)
		return &APIError{p}
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var l LogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			continue // a line cut by a crash
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil && !strings.Contains(err.Error(), "closed") {
		return err
	}
	return nil
}

// DevStatus returns developer mode's state.
func (c *Client) DevStatus(ctx context.Context) (DevStatus, error) {
	var out DevStatus
	return out, c.do(ctx, http.MethodGet, "/v1/dev", nil, "", &out)
}

// DevEnable turns developer mode on (local socket only).
func (c *Client) DevEnable(ctx context.Context) (DevStatus, error) {
	var out DevStatus
	return out, c.do(ctx, http.MethodPost, "/v1/dev/enable", nil, "", &out)
}

// DevDisable turns developer mode off (local socket only).
func (c *Client) DevDisable(ctx context.Context) (DevStatus, error) {
	var out DevStatus
	return out, c.do(ctx, http.MethodPost, "/v1/dev/disable", nil, "", &out)
}

// DevPairingCode makes a one-time pairing code (local socket only).
func (c *Client) DevPairingCode(ctx context.Context) (PairingCode, error) {
	var out PairingCode
	return out, c.do(ctx, http.MethodPost, "/v1/dev/pair", nil, "", &out)
}

// DevUnpair forgets a paired workstation, by id or "all" (local socket only).
func (c *Client) DevUnpair(ctx context.Context, id string) ([]devmode.Pairing, error) {
	var out []devmode.Pairing
	return out, c.do(ctx, http.MethodDelete, "/v1/dev/pairings/"+url.PathEscape(id), nil, "", &out)
}

// ExecIO is the local end of an exec: where the process's stdin comes from and
// its output goes, and terminal resizes (columns, rows) to pass on.
type ExecIO struct {
	Stdin          io.Reader // nil: none (the process reads end of file)
	Stdout, Stderr io.Writer
	Resize         <-chan [2]uint16
}

// Exec runs a command in an app's running container and returns its exit code.
func (c *Client) Exec(ctx context.Context, name string, req ExecRequest, eio ExecIO) (int, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return -1, err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/apps/"+url.PathEscape(name)+"/exec", bytes.NewReader(body))
	if err != nil {
		return -1, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hreq.Header.Set("Connection", "Upgrade")
	hreq.Header.Set("Upgrade", ExecProtocol)
	resp, err := c.hc.Do(hreq)
	if err != nil {
		return -1, fmt.Errorf("ternd: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		var p Problem
		if json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&p) != nil || p.Title == "" {
			p = Problem{Title: resp.Status, Status: resp.StatusCode}
		}
		return -1, &APIError{p}
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		return -1, fmt.Errorf("ternd: exec: connection not upgraded")
	}
	stop := context.AfterFunc(ctx, func() { rwc.Close() })
	defer stop()
	fw := &FrameWriter{W: rwc}
	if eio.Stdin != nil {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := eio.Stdin.Read(buf)
				if n > 0 && fw.WriteFrame(FrameStdin, buf[:n]) != nil {
					return
				}
				if err != nil {
					fw.WriteFrame(FrameStdinClose, nil)
					return
				}
			}
		}()
	} else {
		fw.WriteFrame(FrameStdinClose, nil)
	}
	done := make(chan struct{})
	defer close(done)
	if eio.Resize != nil {
		go func() {
			for {
				select {
				case sz := <-eio.Resize:
					p := binary.BigEndian.AppendUint16(nil, sz[0])
					fw.WriteFrame(FrameResize, binary.BigEndian.AppendUint16(p, sz[1]))
				case <-done:
					return
				}
			}
		}()
	}
	br := bufio.NewReader(rwc)
	for {
		typ, p, err := ReadFrame(br)
		if err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("ternd: exec stream: %w", err)
		}
		switch typ {
		case FrameStdout:
			if eio.Stdout != nil {
				eio.Stdout.Write(p)
			}
		case FrameStderr:
			if eio.Stderr != nil {
				eio.Stderr.Write(p)
			}
		case FrameExit:
			if len(p) != 4 {
				return -1, fmt.Errorf("ternd: exec: bad exit frame")
			}
			return int(int32(binary.BigEndian.Uint32(p))), nil
		case FrameError:
			return -1, fmt.Errorf("ternd: exec: %s", p)
		}
	}
}

// ErrNotReady reports an app that will not answer: it is broken, exited,
// unhealthy or backing off after a crash.
var ErrNotReady = errors.New("app is not ready")

// WaitReady polls an app until it runs and, if it has a health check, is
// healthy. It fails at once on a state that will not get there by itself.
func (c *Client) WaitReady(ctx context.Context, name string) (AppStatus, error) {
	for {
		st, err := c.Inspect(ctx, name)
		if err != nil {
			return st, err
		}
		switch {
		case st.State == StateRunning && (st.Health == HealthNone || st.Health == HealthHealthy):
			return st, nil
		case st.State == StateBroken || st.State == StateExited || st.State == StateBackoff || st.Health == HealthUnhealthy:
			return st, fmt.Errorf("%w: %s %s is %s %s", ErrNotReady, st.Name, st.Version, st.State, st.Health)
		}
		select {
		case <-ctx.Done():
			return st, fmt.Errorf("%w: %s %s is still %s %s", ErrNotReady, st.Name, st.Version, st.State, st.Health)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
