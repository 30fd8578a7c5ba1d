package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// DefaultSocket is where ternd serves its local API.
const DefaultSocket = "/run/tern/ternd.sock"

// Client talks to a ternd's API.
type Client struct {
	hc   *http.Client
	base string
}

// NewClient connects to a device address: unix:///path/to.sock (the default
// socket if empty).
func NewClient(device string) (*Client, error) {
	if device == "" {
		device = "unix://" + DefaultSocket
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
	return nil, fmt.Errorf("device %q: want unix:///path/to/ternd.sock", device)
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
